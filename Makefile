# gencond: `make demo` runs the main job, `make test` the test suite, `make docs` the documentation site.
# Each sets up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export GENCOND_DATA_DIR ?= $(abspath ../shared/data)
export MUJOCO_GL ?= egl
export PYTHONWARNINGS ?= ignore::UserWarning:gluonts.json

.PHONY: setup demo test docs clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip >/dev/null
	$(PY) -m pip install -e '.[all,test]'  # every domain's extra, and the test tools
	touch $@

demo: setup  # extra config overrides: make demo ARGS="train.max_steps=400"
	$(VENV)/bin/gencond train configs/timeseries/demo.yaml $(ARGS)
	$(VENV)/bin/gencond forecast runs/demo

test: setup
	$(PY) -m pytest -q

$(VENV)/.docs: $(VENV)/.installed pyproject.toml
	$(PY) -m pip install -e '.[docs]'
	touch $@

docs: $(VENV)/.docs  # the documentation site from docs/ into site/; broken links and references fail
	$(VENV)/bin/mkdocs build --strict

clean:
	rm -rf runs site
