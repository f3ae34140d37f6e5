"""llama.cpp on the engine's exact weights, run inside its own virtual environment (.venv-llamacpp,
made by `make bench`): reads a JSON request on stdin, prints one JSON line of measurements.

The bundled Q4_1 GGUF is turned into F32 or BF16 by llama.cpp's own `llama_model_quantize`
(requantizing, so every weight is the dequantized value the engine runs) and cached beside it.
Request: {"gguf", "cache", "dtype": "float32"|"bfloat16", "prompt_ids", "new_tokens", "prefill_ids", "threads"}.
Reply: {"decode_tokens_per_s", "prefill_s", "tokens"} (tokens: the greedy ids after prompt_ids).
"""
import ctypes
import json
import os
import sys
import time

import llama_cpp

FTYPES = {"float32": llama_cpp.LLAMA_FTYPE_ALL_F32, "bfloat16": llama_cpp.LLAMA_FTYPE_MOSTLY_BF16}


def converted(gguf: str, cache: str, dtype: str) -> str:
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


def main() -> None:
    request = json.load(sys.stdin)
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
