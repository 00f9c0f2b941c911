# gencond: `make demo` runs the main job, `make test` the test suite. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export GENCOND_DATA_DIR ?= $(abspath ../shared/data)
export MUJOCO_GL ?= egl
export PYTHONWARNINGS ?= ignore::UserWarning:gluonts.json

.PHONY: setup demo test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip >/dev/null
	$(PY) -m pip install -e '.[test]'
	touch $@

demo: setup  # extra config overrides: make demo ARGS="train.max_steps=400"
	$(VENV)/bin/gencond train configs/timeseries/demo.yaml $(ARGS)
	$(VENV)/bin/gencond forecast runs/demo

test: setup
	$(PY) -m pytest -q

clean:
	rm -rf runs
