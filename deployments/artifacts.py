"""Which weights directory a replica verifies against its signed manifest, with which keys."""

from __future__ import annotations

import os
import re
from pathlib import Path

from deployments.args import ArtifactsArgs, ModelArgs
from models import manifest
from models.registry import ModelSpec
from models.weights import BUNDLED_DIR, WeightsIntegrityError, torchvision_cache_path

RELEASE_KEY = BUNDLED_DIR / "release-signing-key.pub"
_PEM_BLOCK = re.compile(rb"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", re.S)


def public_keys(artifacts: ArtifactsArgs) -> list[bytes]:
    """PEM public keys from the configured file (or the bundled release key) and the environment."""
    blobs: list[bytes] = []
    if artifacts.public_keys_file:
        path = RELEASE_KEY if artifacts.public_keys_file == "bundled" else Path(artifacts.public_keys_file)
        try:
            blobs.append(path.read_bytes())
        except OSError as exc:
            raise WeightsIntegrityError(
                f"cannot read the signing public key file {path.name} ({exc.strerror})"
            ) from None
    if os.environ.get(artifacts.public_keys_env):
        blobs.append(os.environ[artifacts.public_keys_env].encode())
    return [match.group(0) for blob in blobs for match in _PEM_BLOCK.finditer(blob)]


def weights_directory(spec: ModelSpec, model: ModelArgs) -> Path | None:
    """The directory whose manifest covers this model's weights; None for random weights."""
    source = spec.weights.source
    if source == "bundled":
        return BUNDLED_DIR
    if source == "file" and model.weights:
        return Path(model.weights).parent
    if source == "torchvision":
        from models.classifiers import resolve_torchvision_weights

        return torchvision_cache_path(
            resolve_torchvision_weights(model.registry_key, model.weights or "DEFAULT")
        ).parent
    return None


def verify_weights(spec: ModelSpec, model: ModelArgs, artifacts: ArtifactsArgs) -> str | None:
    """Verify the model's weights directory when signing is configured; a message on success."""
    keys = public_keys(artifacts)
    if not keys and not artifacts.require_signatures:
        return None
    directory = weights_directory(spec, model)
    if directory is None:
        return None
    listed = manifest.verify_directory(directory, keys, require_signature=artifacts.require_signatures)
    return f"weights of {spec.name} verified: {len(listed)} files in {directory.name}/ match the signed manifest"
