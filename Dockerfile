# The serving image: this project installed on the official Ray image. KubeRay starts the Ray head
# and workers from it (and sets their command), so code and weights ship in the image, never in a
# Ray runtime_env.
#
#   docker build -t vision-maas:cpu .
#   docker build --build-arg VARIANT=gpu \
#       --build-arg TORCHVISION_WEIGHTS="resnet50:IMAGENET1K_V2 mobilenet_v3_large:DEFAULT" \
#       -t vision-maas:gpu .

# Must equal the ray pin in constraints.txt (tests/unit/test_dockerfile.py checks): the cluster and
# the Serve code must run the Ray version the tests ran with.
ARG RAY_VERSION=2.60.0
# cpu or gpu: the base image flavour and which torch build is installed.
ARG VARIANT=cpu

FROM rayproject/ray:${RAY_VERSION}-py311-${VARIANT}

# An ARG declared before FROM is visible after it only when declared again.
ARG VARIANT

# The base image runs as the non-root user ray (uid 1000, group users) with its Python under
# /home/ray, so pip needs no root. COPY --chown also creates /home/ray/app owned by ray: pip builds
# in the source tree and must be able to write there.
COPY --chown=ray:users pyproject.toml constraints.txt README.md /home/ray/app/
COPY --chown=ray:users contract/ /home/ray/app/contract/
COPY --chown=ray:users models/ /home/ray/app/models/
COPY --chown=ray:users deployments/ /home/ray/app/deployments/
WORKDIR /home/ray/app

# constraints.txt pins every dependency to what the tests ran with. The cpu image takes torch from
# PyTorch's CPU index (torch==2.14.1 accepts 2.14.1+cpu), not the multi-GB CUDA wheels from PyPI.
# The last line checks, from outside the source tree, that the installed package holds the bundled
# weights (package-data).
RUN case "$VARIANT" in \
        cpu) torch_index="--extra-index-url https://download.pytorch.org/whl/cpu" ;; \
        gpu) torch_index="" ;; \
        *) echo "VARIANT must be cpu or gpu, not '$VARIANT'" >&2; exit 1 ;; \
    esac \
    && pip install --no-cache-dir -c constraints.txt $torch_index . \
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
    RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH=134217728

# Ray Serve's HTTP front door (HAProxy).
EXPOSE 8000

# Numeric, so Kubernetes runAsNonRoot can verify the user is not root (a name it cannot check).
# No CMD: KubeRay sets the command of the head and worker containers; the base image's default stays.
USER 1000
