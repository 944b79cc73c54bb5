"""The deployment signing key: it signs every trained version's manifest (deployments.training),
and every replica checks that signature before loading a version (deployments.store_models). An
operator's key, never the release key that signs the bundled weights.

The key is `training.signing_key_file`, else the PEM in the variable named by
`training.signing_key_env`; with neither, a one-machine cluster (a laptop) creates the store's own
once, under `<store>/keys/`, and a cluster of several nodes refuses to train (docs/training.md)."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import ray
from cryptography.hazmat.primitives import serialization

from deployments.args import TrainingArgs
from deployments.store import Store
from models import manifest

logger = logging.getLogger("ray.serve")

KEY_FILE = "deployment-signing.pem"


class SigningKeyMissing(RuntimeError):
    """No deployment signing key is configured (and the store may not make its own)."""


def signing_key(training: TrainingArgs, store: Store) -> bytes:
    """The PEM private key that signs trained versions (see the module docstring for the rule)."""
    if training.signing_key_file:
        path = Path(training.signing_key_file).expanduser()
        try:
            return path.read_bytes()
        except OSError as exc:
            raise SigningKeyMissing(f"cannot read the signing key file {path.name} ({exc.strerror})") from None
    if os.environ.get(training.signing_key_env):
        return os.environ[training.signing_key_env].encode()
    nodes = [node for node in ray.nodes() if node.get("Alive")]  # type: ignore[no-untyped-call]
    if len(nodes) > 1:
        raise SigningKeyMissing(
            "no deployment signing key: set training.signing_key_file, or the PEM in "
            f"${training.signing_key_env} (python -m models.manifest keygen makes one)"
        )
    return _store_key(store)


_KEY_LOCK = threading.Lock()


def _store_key(store: Store) -> bytes:
    """The store's own signing key, created once (one machine only: see the module docstring)."""
    path = store.keys / KEY_FILE
    with _KEY_LOCK:
        if not path.exists():
            private, public = manifest.generate_keypair()
            path.parent.mkdir(parents=True, exist_ok=True)
            (path.parent / (path.stem + ".pub")).write_bytes(public)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(private)
            logger.warning(
                "training: no signing key configured; this one-machine store made its own (%s, "
                "public key beside it); configure training.signing_key_file on a cluster",
                path.name,
            )
        return path.read_bytes()


def deployment_public_keys(training: TrainingArgs, store: Store) -> list[bytes]:
    """The PEM public key of the deployment signing key, which verifies trained versions."""
    public = manifest.load_private_key(signing_key(training, store)).public_key()
    return [public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)]
