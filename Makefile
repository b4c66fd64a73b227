# make train: set up .venv if missing, then train the default experiment (ARGS="..." adds Hydra overrides)
# make test:  set up .venv if missing, then run the whole test suite (slow end-to-end tests included)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# pytest and the optional plugins the tests use (sweeper, SLURM launcher, trackers)
EXTRAS := dev,optuna,slurm,mlflow,wandb

# Use ../shared/data as the offline data mirror when it exists and no mirror was chosen.
ifeq ($(origin VAELAB_DATA_MIRROR), undefined)
  ifneq ($(wildcard ../shared/data),)
    export VAELAB_DATA_MIRROR := $(abspath ../shared/data)
  endif
endif

.PHONY: setup train test test-fast clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -e ".[$(EXTRAS)]"
	touch $(STAMP)

setup: $(STAMP)

train: $(STAMP)
	$(BIN)/python -m vaelab.train $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
