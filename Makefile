# Everything runs inside .venv, created on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# torch/torchvision are pinned to the builds this project is tested with; override for your CUDA.
TORCH_PKGS ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=
DEMO_DIR ?= outputs/demo

.PHONY: venv demo test faults bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PKGS)
	$(PY) -m pip install -q -e ".[all,dev]"
	touch $@

venv: $(VENV)/.installed

demo: venv
	PY=$(PY) DEMO_DIR=$(DEMO_DIR) bash launch/demo.sh

test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

faults: venv
	$(PY) -m pytest tests/faults -m faults $(PYTEST_ARGS)

bench: venv
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) outputs multirun
