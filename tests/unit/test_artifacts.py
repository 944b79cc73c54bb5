"""A replica's weight verification: which directory, which keys, and the refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from deployments.args import ArtifactsArgs, ModelArgs
from deployments.artifacts import RELEASE_KEY, public_keys, verify_weights, weights_directory
from models import manifest
from models.registry import get_spec
from models.weights import BUNDLED_DIR, WeightsIntegrityError, sha256_file
from tests.conftest import signed_weights

REQUIRED = ArtifactsArgs(require_signatures=True, public_keys_file="bundled")


def test_bundled_weights_verify_against_the_shipped_release_key() -> None:
    model = ModelArgs(name="digits_cnn")
    message = verify_weights(get_spec("digits_cnn"), model, REQUIRED)
    assert message is not None
    assert "verified" in message
    assert weights_directory(get_spec("digits_cnn"), model) == BUNDLED_DIR


def test_nothing_is_checked_when_signing_is_not_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VISION_MAAS_SIGNING_KEYS", raising=False)
    assert verify_weights(get_spec("digits_cnn"), ModelArgs(name="digits_cnn"), ArtifactsArgs()) is None


def test_keys_are_read_from_the_environment_too(monkeypatch: pytest.MonkeyPatch) -> None:
    _, public = manifest.generate_keypair()
    monkeypatch.setenv("VISION_MAAS_SIGNING_KEYS", public.decode())
    keys = public_keys(ArtifactsArgs(public_keys_file="bundled"))
    assert keys == [RELEASE_KEY.read_bytes().strip(), public.strip()]


@pytest.fixture
def signed_file_weights(tmp_path: Path) -> tuple[Path, ArtifactsArgs, ModelArgs]:
    """squeezenet1_1 weights in their own directory, signed by a fresh key."""
    path, key_file = signed_weights(tmp_path)
    artifacts = ArtifactsArgs(require_signatures=True, public_keys_file=str(key_file))
    model = ModelArgs(name="squeezenet1_1", weights=str(path), sha256=sha256_file(path))
    return path, artifacts, model


def test_signed_file_weights_verify(signed_file_weights: tuple[Path, ArtifactsArgs, ModelArgs]) -> None:
    _, artifacts, model = signed_file_weights
    spec = get_spec("squeezenet1_1", model.weights, model.sha256)
    assert verify_weights(spec, model, artifacts) is not None


def test_changed_byte_is_refused_naming_the_file(signed_file_weights: tuple[Path, ArtifactsArgs, ModelArgs]) -> None:
    path, artifacts, model = signed_file_weights
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    spec = get_spec("squeezenet1_1", model.weights, model.sha256)
    with pytest.raises(WeightsIntegrityError, match=r"squeezenet\.safetensors"):
        verify_weights(spec, model, artifacts)


def test_added_file_is_refused_naming_it(signed_file_weights: tuple[Path, ArtifactsArgs, ModelArgs]) -> None:
    path, artifacts, model = signed_file_weights
    (path.parent / "implant.pt").write_bytes(b"\x80\x04N.")
    spec = get_spec("squeezenet1_1", model.weights, model.sha256)
    with pytest.raises(WeightsIntegrityError, match=r"implant\.pt"):
        verify_weights(spec, model, artifacts)


def test_missing_signature_is_refused_when_required(signed_file_weights: tuple[Path, ArtifactsArgs, ModelArgs]) -> None:
    path, artifacts, model = signed_file_weights
    (path.parent / "MANIFEST.json.sig").unlink()
    spec = get_spec("squeezenet1_1", model.weights, model.sha256)
    with pytest.raises(WeightsIntegrityError, match="signature"):
        verify_weights(spec, model, artifacts)


def test_signature_by_another_key_is_refused(signed_file_weights: tuple[Path, ArtifactsArgs, ModelArgs]) -> None:
    _, _, model = signed_file_weights
    spec = get_spec("squeezenet1_1", model.weights, model.sha256)
    with pytest.raises(WeightsIntegrityError):
        verify_weights(spec, model, REQUIRED)  # the release key did not sign these
