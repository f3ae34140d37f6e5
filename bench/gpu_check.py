"""The GPU check's stages (run one at a time by bench/gpu_check.sh, each under its own time limit).

No weights can reach a GPU machine, so the models are Llama-shaped with random weights, built on the
device in bfloat16 (timing does not depend on the values): SmolLM2-135M, Llama-3.2-1B and
Llama-3.1-8B shapes. Each stage adds its figures to OUT/results.json under its name; `table` reads
whatever the stages left and writes OUT/table.md (few files: a device machine returns at most 8). `--tiny` shrinks every shape so that the whole script runs on a CPU in seconds
(the suite's dry run); there the CUDA-graph column says it needs CUDA.

Stages: env (software and device), roof (a device-to-device copy: the bandwidth this GPU really
gives), and one stage per model: TTFT for 128 / 1024 / 4096 prompt tokens; decode ms per token,
instrumented (the page's per-layer view) and plain, interleaved; the bytes a decode step reads
against the datasheet and the copy roof; and decode over a static cache, eager and captured as one
CUDA graph, with the verdict the page would give (inference/lessons/verdicts.py: bandwidth- or launch-bound).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from inference.lessons.verdicts import decode_bound_verdict
from inference.model.kv_cache import cache_of, forward
from inference.settings import GenerationSettings

SHAPES = {
    "smollm2-135m": dict(num_hidden_layers=30, hidden_size=576, num_attention_heads=9, num_key_value_heads=3,
                         intermediate_size=1536, vocab_size=49152, tie_word_embeddings=True),
    "llama-1b": dict(num_hidden_layers=16, hidden_size=2048, num_attention_heads=32, num_key_value_heads=8,
                     intermediate_size=8192, vocab_size=128256, tie_word_embeddings=True),
    "llama-8b": dict(num_hidden_layers=32, hidden_size=4096, num_attention_heads=32, num_key_value_heads=8,
                     intermediate_size=14336, vocab_size=128256, tie_word_embeddings=False),
}
TINY = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
            vocab_size=256, tie_word_embeddings=True)
PROMPTS = (128, 1024, 4096)
TINY_PROMPTS = (8, 16, 32)


class IdTokenizer:
    """Token ids only: the engine streams text through a tokenizer, and random weights speak none."""
    eos_token_id = None
    chat_template = None

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(f" {i}" for i in ids)


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def stage_env(args: argparse.Namespace) -> dict[str, Any]:
    import transformers

    found = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
             "transformers": transformers.__version__, "device": "cpu"}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        found.update(device=torch.cuda.get_device_name(0), memory_gb=round(props.total_memory / 1e9, 1),
                     capability=f"{props.major}.{props.minor}")
    return found


def stage_roof(args: argparse.Namespace) -> dict[str, Any]:
    """A device-to-device copy of a buffer far larger than any cache: bytes read + written per second."""
    size = (4 << 20) if args.tiny else (2 << 30)
    src = torch.empty(size, dtype=torch.uint8, device=device())
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    times = []
    for _ in range(10):
        synchronize()
        start = time.perf_counter()
        dst.copy_(src)
        synchronize()
        times.append(time.perf_counter() - start)
    return {"copy_bytes_per_s": 2 * size / min(times), "buffer_bytes": size}


def build_engine(shape: dict[str, Any], max_context: int) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    from inference.engine import Engine
    from inference.hardware.device import device_info
    from inference.model.loading import LoadedModel, model_info

    torch.manual_seed(0)
    config = LlamaConfig(**shape, max_position_embeddings=max_context)
    dtype, where = torch.bfloat16, device()
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)            # built in bfloat16 directly: an 8B model in float32 is 32 GB
    try:
        with where:
            model = LlamaForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(previous)
    params = sum(p.numel() for p in model.parameters())
    info = model_info(model, f"random Llama ({params / 1e9:.2f}B params)")
    engine = Engine(LoadedModel(model, IdTokenizer(), info, where), device_info(where, dtype), fast_kernels=False)
    engine.warm_up()
    return engine


def ttft_ms(engine: Any, prompt_tokens: int) -> float:
    settings = GenerationSettings(max_new_tokens=2)
    traces = [engine.generate([7] * prompt_tokens, settings, stop_at_eos=False).run_to_end() for _ in range(3)]
    return statistics.median(t.summary.ttft_ms for t in traces)


def decode_pair(engine: Any, prompt_tokens: int, new_tokens: int) -> dict[str, float]:
    """Instrumented and plain decode, interleaved three times: ms per token and bytes per step."""
    settings = GenerationSettings(max_new_tokens=new_tokens)
    runs: dict[bool, list[Any]] = {True: [], False: []}
    for _ in range(3):
        for instrument in (True, False):
            runs[instrument].append(engine.generate([7] * prompt_tokens, settings, instrument=instrument,
                                                    stop_at_eos=False).run_to_end())
    step_bytes = statistics.median(s.bytes for s in runs[False][0].decode_steps)
    return {"instrumented_ms": statistics.median(t.summary.decode_ms_median for t in runs[True]),
            "plain_ms": statistics.median(t.summary.decode_ms_median for t in runs[False]),
            "step_bytes": step_bytes}


def static_decode_ms(model: Any, prompt_tokens: int, new_tokens: int, graph: bool) -> tuple[float, list[int]]:
    """Greedy decode over a StaticCache (fixed addresses), eager or replaying one captured CUDA graph
    per step: ms per token (the median of the steps) and the tokens."""
    from transformers import StaticCache

    where = device()
    cache = StaticCache(config=model.config, max_cache_len=prompt_tokens + new_tokens + 1)
    with torch.inference_mode():
        prompt = torch.full((1, prompt_tokens), 7, dtype=torch.long, device=where)
        out = forward(model, prompt, cache, use_cache=True, position_ids=torch.arange(prompt_tokens, device=where)[None],
                      logits_to_keep=1)
        token = out.logits[:, -1].argmax(-1, keepdim=True)                      # (1, 1)
        position = torch.full((1, 1), prompt_tokens, dtype=torch.long, device=where)

        def step() -> torch.Tensor:
            return forward(model, token, cache, use_cache=True, position_ids=position, logits_to_keep=1).logits

        replay = step
        if graph:
            # One eager step on a side stream first (as torch.cuda.graphs asks), then the capture;
            # both wrote position `prompt_tokens`, which the next step overwrites.
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                step()
            torch.cuda.current_stream().wait_stream(side)
            for layer in cache.layers:
                layer.cumulative_length.fill_(prompt_tokens)
            captured = torch.cuda.CUDAGraph()
            with torch.cuda.graph(captured):
                logits = step()
            for layer in cache.layers:
                layer.cumulative_length.fill_(prompt_tokens)

            def replay() -> torch.Tensor:
                captured.replay()
                return logits

        tokens, times = [], []
        for _ in range(new_tokens):
            synchronize()
            start = time.perf_counter()
            next_token = replay()[:, -1].argmax(-1, keepdim=True)
            synchronize()
            times.append((time.perf_counter() - start) * 1e3)
            token.copy_(next_token)
            position.add_(1)
            tokens.append(int(next_token))
    return statistics.median(times[1:] or times), tokens


def stage_model(args: argparse.Namespace) -> dict[str, Any]:
    shape = TINY if args.tiny else SHAPES[args.stage]
    prompts = TINY_PROMPTS if args.tiny else PROMPTS
    new_tokens = 8 if args.tiny else 32
    engine = build_engine(shape, max(prompts) + new_tokens + 8)
    info, roofs = engine.loaded.info, engine.device_info
    result: dict[str, Any] = {"model": f"{args.stage}{' (tiny)' if args.tiny else ''}: {info.name}", "weight_bytes": info.weight_bytes, "device": roofs.name,
                              "datasheet_bytes_per_s": roofs.peak_bytes_per_s, "roofs_from": roofs.source}
    result["ttft_ms"] = {str(n): ttft_ms(engine, n) for n in prompts}
    result.update(decode_pair(engine, prompts[0], new_tokens))
    model = engine.loaded.model
    result["static_eager_ms"], eager_tokens = static_decode_ms(model, prompts[0], new_tokens, graph=False)
    if torch.cuda.is_available():
        result["graph_ms"], graph_tokens = static_decode_ms(model, prompts[0], new_tokens, graph=True)
        result["graph_tokens_match"] = sum(a == b for a, b in zip(eager_tokens, graph_tokens))
    roof = copy_roof(args.out)
    result["verdict"] = decode_bound_verdict(result["plain_ms"], result["step_bytes"], roof or roofs.peak_bytes_per_s,
                                             "the copy roof measured in this run" if roof else "the datasheet",
                                             result.get("graph_ms"), device().type)
    return result


def results(out: Path) -> dict[str, Any]:
    try:
        return json.loads((out / "results.json").read_text())
    except (OSError, ValueError):
        return {}


def copy_roof(out: Path) -> float | None:
    roof = results(out).get("roof", {}).get("copy_bytes_per_s")
    return float(roof) if roof else None


def _share(step_bytes: float, ms: float | None, roof: float | None) -> str:
    if not ms or not roof:
        return "-"
    return f"{step_bytes / (ms / 1e3) / 1e9:,.0f} GB/s = {step_bytes / (ms / 1e3) / roof:.0%}"


def stage_table(args: argparse.Namespace) -> str:
    """The results as Markdown (also OUT/table.md); a stage that failed or left nothing says so."""
    out: Path = args.out
    status = dict(line.split(maxsplit=1) for line in (out / "status.txt").read_text().splitlines()
                  if line.strip()) if (out / "status.txt").exists() else {}
    found = results(out)
    env = found.get("env", {})
    roof = copy_roof(out)
    lines = [f"GPU check on {env.get('device', '?')} ({env.get('memory_gb', '?')} GB), torch {env.get('torch', '?')} "
             f"(CUDA {env.get('cuda', '-')}), transformers {env.get('transformers', '?')}, Python {env.get('python', '?')}",
             f"copy roof (device-to-device, measured): {roof / 1e9:,.0f} GB/s" if roof else "copy roof: not measured",
             "", "| model | TTFT ms (" + " / ".join(map(str, TINY_PROMPTS if args.tiny else PROMPTS)) + " tokens) "
             "| decode ms/token plain (instrumented / plain) | read vs datasheet | read vs copy roof "
             "| static cache eager / CUDA graph ms | graph vs copy roof |", "|---|---|---|---|---|---|---|"]
    verdicts = []
    for name in SHAPES:
        result = found.get(name)
        if result is None:
            lines.append(f"| {name} | {status.get(name, 'not run')} | | | | | |")
            continue
        ttft = " / ".join(f"{v:,.1f}" for v in result["ttft_ms"].values())
        graph = result.get("graph_ms")
        lines.append(
            f"| {result['model']} | {ttft} | {result['plain_ms']:.2f} ({result['instrumented_ms'] / result['plain_ms']:.2f}x) "
            f"| {_share(result['step_bytes'], result['plain_ms'], result['datasheet_bytes_per_s'])} "
            f"| {_share(result['step_bytes'], result['plain_ms'], roof)} "
            f"| {result['static_eager_ms']:.2f} / {f'{graph:.2f}' if graph else 'needs CUDA'} "
            f"| {_share(result['step_bytes'], graph, roof)} |")
        verdicts.append(f"- {name}: {result['verdict']}")
    failed = [f"{stage} ({why})" for stage, why in status.items() if why != "ok"]
    text = "\n".join([*lines, "", *verdicts, "", f"stages not ok: {', '.join(failed)}" if failed else "every stage ok"])
    (out / "table.md").write_text(text + "\n")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=["env", "roof", *SHAPES, "table"])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tiny", action="store_true", help="tiny shapes: the dry run on a CPU")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.stage == "table":
        print(stage_table(args))
        return
    run = {"env": stage_env, "roof": stage_roof}.get(args.stage, stage_model)
    result = run(args)
    found = results(args.out)
    found[args.stage] = result
    (args.out / "results.json").write_text(json.dumps(found, indent=1))
    print(json.dumps(result), file=sys.stderr)


if __name__ == "__main__":
    main()
