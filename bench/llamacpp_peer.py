"""llama.cpp on the engine's exact weights, run inside its own virtual environment (.venv-llamacpp,
made by `make bench`): reads a JSON request on stdin, prints one JSON line of measurements.

The bundled Q4_1 GGUF is turned into F32 or BF16 by llama.cpp's own `llama_model_quantize`
(requantizing, so every weight is the dequantized value the engine runs) and cached beside it.
The int8 file is llama.cpp's Q8_0 requantized from it; q4_1 is the bundled file itself (its LM head is
Q8_0 in both, as in PhaseScope's --dtype int8 and q4_1).
Request: {"gguf", "cache", "dtype": "float32"|"bfloat16"|"int8"|"q4_1", "prompt_ids", "new_tokens", "prefill_ids",
"threads"}.
Reply: {"decode_tokens_per_s", "prefill_s", "tokens"} (tokens: the greedy ids after prompt_ids).
"""
import ctypes
import json
import os
import sys
import time

import llama_cpp

FTYPES = {"float32": llama_cpp.LLAMA_FTYPE_ALL_F32, "bfloat16": llama_cpp.LLAMA_FTYPE_MOSTLY_BF16,
          "int8": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0}


def converted(gguf: str, cache: str, dtype: str) -> str:
    if dtype == "q4_1":
        return gguf
    out = os.path.join(cache, f"SmolLM2-135M-Instruct.{dtype}.gguf")
    if not os.path.isfile(out):
        os.makedirs(cache, exist_ok=True)
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype, params.allow_requantize, params.nthread = FTYPES[dtype], True, 2
        tmp = f"{out}.{os.getpid()}.tmp"
        if llama_cpp.llama_model_quantize(gguf.encode(), tmp.encode(), ctypes.byref(params)) != 0:
            raise SystemExit(f"llama_model_quantize failed for {dtype}")
        os.replace(tmp, out)
    return out


def without_repacked_weights() -> None:
    """Load models without llama.cpp's extra buffer types (repacked weights for its AMX and
    interleaved kernels): with them, llama-cpp-python 0.3.36 crashed (SIGSEGV) on every quantized
    model on the Sapphire Rapids development machine; without them it runs."""
    default = llama_cpp.llama_cpp.llama_model_default_params

    def params():  # noqa: ANN202
        p = default()
        p.use_extra_bufts = False
        return p

    llama_cpp.llama_cpp.llama_model_default_params = params


def main() -> None:
    request = json.load(sys.stdin)
    if request["dtype"] in ("int8", "q4_1"):
        without_repacked_weights()
    path = converted(request["gguf"], request["cache"], request["dtype"])
    threads = request["threads"]
    llm = llama_cpp.Llama(path, n_ctx=2048, n_batch=512, n_ubatch=512, n_threads=threads,
                          n_threads_batch=threads, verbose=False)
    stamps, tokens = [], []
    for token in llm.generate(request["prompt_ids"], temp=0.0, top_k=1, reset=True):
        stamps.append(time.perf_counter())
        tokens.append(token)
        if len(tokens) == request["new_tokens"]:
            break
    llm.reset()
    start = time.perf_counter()
    llm.eval(request["prefill_ids"])
    prefill_s = time.perf_counter() - start
    rate = (len(stamps) - 1) / (stamps[-1] - stamps[0])
    print(json.dumps({"decode_tokens_per_s": rate, "prefill_s": prefill_s, "tokens": tokens}))


if __name__ == "__main__":
    main()
