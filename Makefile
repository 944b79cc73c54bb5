# The README's two commands: `make serve` and `make test`. Both build .venv from the
# repo's own files (pyproject.toml + constraints.txt) when it is missing or stale.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= deployments/serve_config.yaml
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: serve test lint venv clean train k8s

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

venv: $(STAMP)

serve: $(STAMP)  ## run the server on http://127.0.0.1:8000 (Ctrl-C stops it and Ray)
	@$(BIN)/python -m deployments.announce $(CONFIG) &
	$(BIN)/serve run $(CONFIG)

test: $(STAMP)  ## the whole suite: lint, types, unit, integration
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest

k8s: $(STAMP)  ## re-render k8s/rayservice.yaml from the chart (a test fails when it is stale)
	$(BIN)/python k8s/render.py

train: $(STAMP)  ## retrain the bundled weights (reproducible, seeded)
	$(BIN)/python -m models.training.train_digits_cnn

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
