# The serving image: this project installed on the official Ray image. KubeRay starts the Ray head
# and workers from it (and sets their command), so code and weights ship in the image, never in a
# Ray runtime_env. Run on its own, it serves the default config on port 8000 (`make image`).
#
#   docker build -t vision-maas:cpu .
#   docker build --build-arg VARIANT=gpu \
#       --build-arg TORCHVISION_WEIGHTS="resnet50:IMAGENET1K_V2 mobilenet_v3_large:DEFAULT" \
#       -t vision-maas:gpu .
#
# Offline, on any Debian/Python base that has the Ray image's user (ray, uid 1000, group users) and
# a Python whose pip that user may write to (tests/container builds one with mmdebstrap):
#
#   podman build --format docker --build-arg BASE_IMAGE=localhost/vision-maas-base:bookworm-py311 \
#       --build-context wheelhouse=build/container/wheelhouse -t vision-maas:cpu .

# Must equal the ray pin in constraints.txt (tests/unit/test_dockerfile.py checks): the cluster and
# the Serve code must run the Ray version the tests ran with.
ARG RAY_VERSION=2.60.0
# cpu or gpu: the base image flavour and which torch build is installed.
ARG VARIANT=cpu
ARG BASE_IMAGE=rayproject/ray:${RAY_VERSION}-py311-${VARIANT}

# Where pip finds the packages. Empty by default: the package indexes. A build given
# `--build-context wheelhouse=DIR` installs from the wheels in DIR alone (`--no-index`), which were
# resolved against constraints.txt when DIR was filled (tests/container/image.py does that).
FROM scratch AS wheelhouse

FROM ${BASE_IMAGE}

# An ARG declared before FROM is visible after it only when declared again.
ARG VARIANT
# A digest of the wheelhouse's contents: a bind mount is not part of the build cache's key, so a
# changed wheelhouse must change this to rebuild the layers installed from it.
ARG WHEELHOUSE_ID=""

# Dependencies first, from pyproject.toml and constraints.txt alone: a change to the code reuses
# this layer and rebuilds in seconds. The base image runs as the non-root user ray (uid 1000,
# group users) with a Python pip may write to, so pip needs no root. COPY --chown also creates
# /home/ray/app owned by ray: pip builds in the source tree and must be able to write there.
COPY --chown=ray:users pyproject.toml constraints.txt /home/ray/app/
WORKDIR /home/ray/app

# constraints.txt pins every dependency to what the tests ran with. The cpu image takes torch from
# PyTorch's CPU index (torch==2.14.1 accepts 2.14.1+cpu), not the multi-GB CUDA wheels from PyPI.
# The `image` extra is what only the image needs (its init process).
RUN --mount=type=bind,from=wheelhouse,target=/wheelhouse \
    case "$VARIANT" in \
        cpu) torch_index="--extra-index-url https://download.pytorch.org/whl/cpu" ;; \
        gpu) torch_index="" ;; \
        *) echo "VARIANT must be cpu or gpu, not '$VARIANT'" >&2; exit 1 ;; \
    esac \
    && if ls /wheelhouse/*.whl >/dev/null 2>&1; then \
        source="--no-index --find-links /wheelhouse"; \
    else \
        source="-c constraints.txt $torch_index"; \
    fi \
    && python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['image']))" > /tmp/requirements.txt \
    && pip install --no-cache-dir $source -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The code (and README.md, the package's description): only these layers rebuild when it changes.
# The last line checks, from outside the
# source tree, that the installed package holds the bundled weights (package-data).
COPY --chown=ray:users README.md /home/ray/app/
COPY --chown=ray:users contract/ /home/ray/app/contract/
COPY --chown=ray:users models/ /home/ray/app/models/
COPY --chown=ray:users deployments/ /home/ray/app/deployments/
RUN --mount=type=bind,from=wheelhouse,target=/wheelhouse \
    if ls /wheelhouse/*.whl >/dev/null 2>&1; then source="--no-index --find-links /wheelhouse"; else source=""; fi \
    && pip install --no-cache-dir --no-deps $source . \
    && rm -rf build *.egg-info \
    && cd / && python -c "from models.weights import BUNDLED_DIR as d; assert 'site-packages' in str(d) and any(d.glob('*.safetensors')), d"

# The torch hub cache: where models.weights.fetch_torchvision looks for torchvision weights.
ENV TORCH_HOME=/home/ray/.cache/torch

# Optional: bake torchvision weights into the image so pods start without network, for example
# --build-arg TORCHVISION_WEIGHTS="resnet50:IMAGENET1K_V2 mobilenet_v3_large:DEFAULT".
# Declared after the install so changing it reuses the install layer; unquoted on purpose so each
# model:weights is one argument. A bad name or a failed download fails the build.
ARG TORCHVISION_WEIGHTS=""
RUN if [ -n "$TORCHVISION_WEIGHTS" ]; then python -m models.prefetch $TORCHVISION_WEIGHTS; fi

# Serve's data path as shipped (deployments/ray_env.py says why; a test keeps them equal): HAProxy
# on port 8000 and direct gRPC between replicas. The chart sets the same in every pod.
ENV RAY_SERVE_ENABLE_HA_PROXY=1 \
    RAY_SERVE_THROUGHPUT_OPTIMIZED=1 \
    RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE=1 \
    RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH=134217728 \
    RAY_USAGE_STATS_ENABLED=0

# Ray Serve's HTTP front door (HAProxy).
EXPOSE 8000

# Ready when Serve's front door on this node answers (KubeRay's own probes replace this in a pod).
HEALTHCHECK --interval=10s --timeout=3s --start-period=180s --retries=3 \
    CMD python -c "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/-/healthz', timeout=2)"

# Numeric, so Kubernetes runAsNonRoot can verify the user is not root (a name it cannot check).
USER 1000

# PID 1 is an init (dumb-init, from PyPI) that forwards signals to the server's whole process
# group, SIGTERM rewritten to SIGINT: `docker stop` stops Serve and Ray the way Ctrl-C does
# `make serve`, well within the default 10 s grace. KubeRay sets the command of the head and worker
# containers, which replaces both lines below.
ENTRYPOINT ["dumb-init", "--rewrite", "15:2", "--"]
# On its own: the default config, bound to 0.0.0.0, writing only under /tmp (deployments/container.py).
CMD ["python", "-m", "deployments.container"]
