# One command to set up and run the tests: `make test`. The virtualenv is created on first use.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel keeps the install small; set TORCH_INDEX=https://download.pytorch.org/whl/cpu on a machine
# whose default index would pull a CUDA build.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=

.PHONY: venv demo test test-fast lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[pipeline,dev,bench]"
	touch $@

venv: $(VENV)/.installed

# The main job on the demo: prepare data and tokenizers, train the teacher, distil teacher -> bridge -> student,
# evaluate all three, check the gates; ends with a summary table (see params.yaml).
demo: $(VENV)/.installed
	$(VENV)/bin/distill run --config params.yaml

test: $(VENV)/.installed
	$(PY) -m pytest -q

test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -m "not slow"

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check distill flows tasks tests bench

bench: $(VENV)/.installed
	$(PY) bench/losses.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
