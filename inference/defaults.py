"""Each experiment's settings unless asked otherwise: the page's controls, the command line's flags
and the experiment functions (inference/lessons/experiments.py) all start from these. No torch here, so
that parsing the command line stays light."""
from __future__ import annotations

SWEEP_PROMPT_TOKENS = (16, 256, 1024)          # the prompt-length sweep's lengths
SWEEP_NEW_TOKENS = 8                           # ... and new tokens per run (enough for a decode median)
RACE_PROMPT_TOKENS, RACE_NEW_TOKENS = 64, 48   # the KV cache race
BATCH_SIZES = (1, 2, 4, 8, 16)                 # the batch sweep
BATCH_PROMPT_TOKENS, BATCH_NEW_TOKENS = 32, 12
# Bytes per weight: 4, 2, about 1 and about 0.6; a short prompt, so that weight bytes dominate decode.
DTYPES_COMPARED = ("float32", "bfloat16", "int8", "q4_1")
DTYPE_PROMPT_TOKENS, DTYPE_NEW_TOKENS = 32, 24
CHUNK_LONG_PROMPT, CHUNK_SIZE, CHUNK_STREAMS = 1024, 128, 4   # chunked prefill: the long prompt, a chunk, streams
PREFIX_STUDENTS, PREFIX_CONTEXT_TOKENS, PREFIX_NEW_TOKENS = 30, 1000, 16   # a class's shared context, prefix caching
GOODPUT_TTFT_S, GOODPUT_TPOT_S = 2.0, 0.2        # the goodput objectives until a teacher sets their own
# Speculative decoding: k drafted tokens per check (a check passes k + 1 tokens: 2, 4, 8, 16, whole
# blocks of the kernel's rows), new tokens per run, and two prompts, one whose answer repeats its
# input and one whose answer does not.
SPECULATE_DRAFT_TOKENS = (1, 3, 7, 15)
SPECULATE_NEW_TOKENS = 64
SPECULATE_PROMPTS = (
    ("repeats its input", "Rename the function add to plus in this code and print the whole code:\n"
                          "def add(a, b):\n    return a + b\n\ndef mul(a, b):\n    return a * b\n\n"
                          "def sub(a, b):\n    return a - b\n"),
    ("new text", "Explain in three sentences why the sky is blue."),
)
