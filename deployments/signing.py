"""The deployment signing key: it signs every trained version's manifest (deployments.training) and
every replica checks that signature before loading a version (deployments.store_models). An
operator's key, never the release key that signs the bundled weights."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from deployments.args import TrainingArgs
from models import manifest


class SigningKeyMissing(manifest.ManifestKeyError):
    """No deployment signing key is configured."""


def deployment_private_key(training: TrainingArgs) -> bytes:
    """The PEM private key: `training.signing_key_file`, else the variable `training.signing_key_env`."""
    if training.signing_key_file:
        try:
            return Path(training.signing_key_file).expanduser().read_bytes()
        except OSError as exc:
            raise SigningKeyMissing(f"cannot read the deployment signing key file ({exc.strerror})") from None
    pem = os.environ.get(training.signing_key_env)
    if pem:
        return pem.encode()
    raise SigningKeyMissing(
        f"no deployment signing key: set training.signing_key_file or the {training.signing_key_env} variable "
        "(python -m models.manifest keygen makes one)"
    )


def deployment_public_keys(training: TrainingArgs) -> list[bytes]:
    """The PEM public key matching the deployment signing key."""
    public = manifest.load_private_key(deployment_private_key(training)).public_key()
    return [public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)]
