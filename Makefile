# One lock file (requirements/lock.txt) pins every dependency; .venv is built from it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PYTHONUNBUFFERED := 1

.PHONY: venv test test-all demo lint clean

$(BIN)/foley: requirements/lock.txt setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24" "setuptools>=70" wheel
	$(BIN)/python -m pip install -q -r requirements/lock.txt
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	touch $(BIN)/foley

venv: $(BIN)/foley

test: venv
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

test-all: venv
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not gpu" $(PYTEST_ARGS)

demo: venv
	$(BIN)/python -m foley.demo --out demo_out

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
