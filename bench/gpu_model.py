"""The phases on a larger Llama-style model, for a GPU machine (run by bench/gpu_check.sh).

No weights can reach such a machine, so the model is built from a Llama-3.2-1B-shaped config with
random weights: timing does not depend on the values. Prints TTFT for several prompt lengths,
decode ms per token and its share of the device's memory roof, as Markdown rows for the README.
`--tiny` builds a small model instead, so the script can be checked on a CPU.
"""
from __future__ import annotations

import argparse
import statistics

import torch

from inference.device import device_info
from inference.engine import Engine
from inference.loading import LoadedModel, model_info
from inference.settings import GenerationSettings

LLAMA_1B = dict(num_hidden_layers=16, hidden_size=2048, num_attention_heads=32, num_key_value_heads=8,
                intermediate_size=8192, vocab_size=128256, max_position_embeddings=8192, tie_word_embeddings=True)
TINY = dict(num_hidden_layers=2, hidden_size=128, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=256, vocab_size=1000, max_position_embeddings=1024, tie_word_embeddings=True)


class IdTokenizer:
    """Token ids only: the engine streams text through a tokenizer, and random weights speak none."""
    eos_token_id = None
    chat_template = None

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(f" {i}" for i in ids)


def build_engine(config: dict, device: torch.device, dtype: torch.dtype) -> Engine:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(LlamaConfig(**config)).to(dtype).eval()
    info = model_info(model, f"random Llama ({sum(p.numel() for p in model.parameters()) / 1e9:.2f}B params)")
    engine = Engine(LoadedModel(model, IdTokenizer(), info, device), device_info(device, dtype))
    engine.warm_up()
    return engine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a small model, to check the script on a CPU")
    parser.add_argument("--prompt-tokens", default="128,1024,4096")
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16
    engine = build_engine(TINY if args.tiny else LLAMA_1B, device, dtype)
    info, roofs = engine.loaded.info, engine.device_info
    print(f"{info.name}, {info.weight_bytes / 1e9:.2f} GB in {info.dtype} on {roofs.name} "
          f"(roofs: {roofs.source}; timing: {'CUDA events' if device.type == 'cuda' else 'perf_counter'})")
    print("| prompt tokens | TTFT ms | decode ms/token (median) | decode bytes/s, share of the memory roof |")
    print("|---|---|---|---|")
    for n in (int(x) for x in args.prompt_tokens.split(",")):
        n = min(n, info.max_context - args.new_tokens)
        settings = GenerationSettings(max_new_tokens=args.new_tokens)
        traces = [engine.generate([7] * n, settings, stop_at_eos=False).run_to_end() for _ in range(3)]
        ttft = statistics.median(t.summary.ttft_ms for t in traces)
        decode = statistics.median(t.summary.decode_ms_median for t in traces)
        rate = statistics.median(t.decode_bytes_per_s for t in traces)
        print(f"| {n} | {ttft:,.1f} | {decode:.2f} | {rate / 1e9:,.0f} GB/s, {rate / roofs.peak_bytes_per_s:.0%} |")


if __name__ == "__main__":
    main()
