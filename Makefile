# The README's two commands: `make serve` and `make test`. Both build .venv from the
# repo's own files (pyproject.toml + constraints.txt) when it is missing or stale.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= deployments/serve_config.yaml
# What Serve runs: CONFIG with one application per model (deployments/topology.py).
SERVE_CONFIG := build/serve_config.yaml
export RAY_USAGE_STATS_ENABLED := 0
# Serve's data path as shipped (deployments/ray_env.py says why; a test keeps the two equal).
export RAY_SERVE_ENABLE_HA_PROXY := 1
export RAY_SERVE_THROUGHPUT_OPTIMIZED := 1
export RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE := 1
export RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH := 134217728
# One machine only (deployments/ray_env.py's ONE_MACHINE_ENV): Ctrl-C stops in seconds, not 30.
export RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S := 2
# One machine only: serving replicas at niceness 0, ahead of training's (ONE_MACHINE_ENV says why).
export RAY_worker_niceness := 0
# One machine only: Serve's controller loop twice a second, not ten times (ONE_MACHINE_ENV says why).
export RAY_SERVE_CONTROL_LOOP_INTERVAL_S := 0.5

.PHONY: serve test test-fast pytest-fast lint types venv clean train k8s tools bench image

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

venv: $(STAMP)

serve: $(STAMP)  ## run the server on http://127.0.0.1:8000 (Ctrl-C stops it and Ray)
	mkdir -p build && $(BIN)/python -m deployments.topology $(CONFIG) -o $(SERVE_CONFIG)
	$(BIN)/python -m deployments.announce $(SERVE_CONFIG) -- $(BIN)/serve run $(SERVE_CONFIG)

test: $(STAMP) tools  ## the whole suite: lint, types, unit, integration, browser
	$(MAKE) --no-print-directory lint types
	$(BIN)/pytest

# mypy without its cache (a fresh clone) takes about 35 s of one core: here it runs beside pytest,
# each one's output shown whole when it ends.
test-fast: $(STAMP)  ## lint, types and every test that starts no Ray cluster or container and is not marked slow
	$(MAKE) --no-print-directory -j3 --output-sync=target lint types pytest-fast

pytest-fast: $(STAMP)
	$(BIN)/pytest -m "not slow and not cluster and not browser and not container"

lint: $(STAMP)  ## ruff: lint and format
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

types: $(STAMP)  ## mypy, strict
	$(BIN)/mypy

# What the suite runs beside Python, from Debian: Chromium (the playground's browser tests;
# Playwright's own download needs the internet), hey (the benchmarks' load generator), a headless
# Java runtime (TorchServe, a benchmark peer) and kubectl (`kubectl kustomize` of k8s/; Debian's
# package is kubernetes-client); podman, runc and mmdebstrap build and run the serving image
# offline (tests/container), redis-server is the external store of its GCS fault-tolerance test.
# A tool that cannot be installed makes its tests skip, named in pytest's summary.
TOOLS := chromium:chromium hey:hey java:default-jre-headless kubectl:kubernetes-client \
	podman:podman buildah:buildah runc:runc mmdebstrap:mmdebstrap redis-server:redis-server
tools:  ## install the system tools the suite needs (Debian/Ubuntu apt; sudo when not root)
	@missing=$$(for pair in $(TOOLS); do command -v $${pair%%:*} >/dev/null || echo $${pair#*:}; done); \
	if [ -n "$$missing" ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $$missing \
	    || echo "make tools: could not install $$missing; the tests that need them will skip" >&2; \
	fi

# The serving image (Dockerfile), with Docker where its daemon answers, else podman; IMAGE_ARGS passes build options, e.g.
# IMAGE_ARGS="--build-arg VARIANT=gpu". podman builds the docker format, which keeps HEALTHCHECK.
ENGINE ?= $(shell docker info >/dev/null 2>&1 && echo docker || echo podman)
IMAGE ?= vision-maas:$(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
image:  ## build the serving image with docker or podman (IMAGE=name:tag, IMAGE_ARGS=build options)
	$(ENGINE) build $(if $(filter podman,$(notdir $(ENGINE))),--format docker) $(IMAGE_ARGS) -t $(IMAGE) .

BENCH_ARGS ?= --quick
bench: $(STAMP) tools  ## the benchmark suite (quick by default; BENCH_ARGS= for every model and size); writes benchmarks/results/
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

k8s: $(STAMP)  ## rewrite the chart's files/verbs.yaml from the registry, re-render k8s/rayservice.yaml (tests fail when stale)
	$(BIN)/python k8s/render.py

TRAINED := digits_cnn digits_detector digits_segmenter digits_dcgan digits_denoiser photo_denoiser moving_digits_lstm

train: $(STAMP)  ## retrain every bundled model (seeded); then sign: python -m models.manifest sign models/weights --key KEY
	for model in $(TRAINED); do $(BIN)/python -m models.training.train_$$model || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
