# Quick start: `make demo` (sets up .venv, runs the LoRA style sweep) and `make test` (sets up .venv, runs the tests).
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel of torch 2.13 lies on this kind of machine; installing it first keeps pip from pulling a
# multi-GB CUDA build for the later `torch>=` requirement. On a GPU machine: make TORCH_SPEC=torch ...
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: venv demo test test-fast test-cluster lint bench clean
venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

demo: venv
	$(PY) -m catsith_sweep run experiments/lora_style.yaml

# Unit and integration tests (GPU tests skip themselves where no CUDA device is present).
test: venv
	$(PY) -m pytest -q -n 2 --dist loadgroup $(PYTEST_ARGS)

# The cluster tier alone: a Ray cluster on 127.0.0.1, an mlflow server, faults injected (docker/README.md).
test-cluster: venv
	$(PY) -m pytest -q -m cluster $(PYTEST_ARGS)

test-fast: venv
	$(PY) -m pytest -q -n 2 -m "not integration" $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

bench: venv
	$(PY) bench/lora_step_overhead.py
	$(PY) bench/sweep_overhead.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
