"""Weight sources: bundled safetensors, torchvision weights (cached), local files pinned by sha256.

Local files may be encrypted at rest (models.crypto): they are decrypted in memory, never on disk.

Only safetensors or `torch.load(weights_only=True)`: no file is ever unpickled as code.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import urllib.error
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as safetensors_load
from safetensors.torch import load_file
from torchvision.models import WeightsEnum

BUNDLED_DIR = Path(__file__).resolve().parent / "weights"
_PICKLE_SUFFIXES = (".pt", ".pth", ".bin")
ENCRYPTED_SUFFIX = ".enc"  # encrypted weights (models.crypto writes and reads them)

StateDict = dict[str, torch.Tensor]


class WeightsError(Exception):
    """Weights cannot be used; the message names the model's weights and what to do."""


class WeightsUnavailable(WeightsError):
    """The weights are neither cached nor downloadable (for example, offline)."""


class WeightsIntegrityError(WeightsError):
    """The weight file's sha256 differs from its pin, or its content is refused."""


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_pin(name: str, actual: str, sha256: str) -> None:
    if actual != sha256.lower():
        raise WeightsIntegrityError(f"weight file {name} has sha256 {actual}, expected {sha256.lower()}")


def _read_safetensors(source: Path | bytes, name: str) -> StateDict:
    try:
        if isinstance(source, bytes):
            return safetensors_load(source)
        return load_file(str(source), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsIntegrityError(f"weight file {name} is not valid safetensors") from exc


def _read_weights_only(source: Path | bytes, name: str) -> StateDict:
    try:
        with warnings.catch_warnings():
            # torch notes foreign pickle protocols; the weights-only unpickler still decides.
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            stream = io.BytesIO(source) if isinstance(source, bytes) else source
            state = torch.load(stream, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        raise WeightsIntegrityError(
            f"weight file {name} is refused: it is not a plain tensor state dict "
            "(only weights-only files load; nothing is unpickled)"
        ) from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsIntegrityError(f"weight file {name} does not hold a state dict of tensors")
    return state


def load_state_dict_file(path: Path, sha256: str | None, plain_sha256_prefix: str | None = None) -> StateDict:
    """Load a state dict from safetensors or a weights-only torch file, checking its pin.

    `<name>.safetensors.enc` / `<name>.pt.enc` (models.crypto) are decrypted in memory with the
    keys in $VISION_MAAS_WEIGHTS_KEYS; the pin is the sha256 of the encrypted file on disk, and
    `plain_sha256_prefix`, when given, the start of the decrypted bytes' (a trained version's name).
    """
    if not path.is_file():
        raise WeightsUnavailable(f"weight file {path.name} does not exist")
    encrypted = path.suffix == ENCRYPTED_SUFFIX
    fmt = Path(path.stem).suffix if encrypted else path.suffix
    if fmt != ".safetensors" and fmt not in _PICKLE_SUFFIXES:
        raise WeightsError(
            f"weight file {path.name}: use .safetensors (or a weights-only .pt/.pth), "
            f"optionally encrypted as .safetensors{ENCRYPTED_SUFFIX}"
        )
    source: Path | bytes = path
    if encrypted:
        # Imported here: models.crypto builds on this module's errors (and plain files need no cryptography).
        from models import crypto

        data = path.read_bytes()  # read once: hashed and decrypted from the same bytes
        if sha256 is not None:
            _check_pin(path.name, hashlib.sha256(data).hexdigest(), sha256)
        # Decrypted in memory only; the ciphertext is dropped before the tensors are built.
        source = crypto.decrypt_bytes(data, crypto.load_keys(), path.name)
        del data
        if plain_sha256_prefix is not None and not hashlib.sha256(source).hexdigest().startswith(plain_sha256_prefix):
            raise WeightsIntegrityError(f"weight file {path.name}: its decrypted weights are not {plain_sha256_prefix}")
    elif sha256 is not None:
        _check_pin(path.name, sha256_file(path), sha256)
    if fmt == ".safetensors":
        return _read_safetensors(source, path.name)
    return _read_weights_only(source, path.name)


def load_bundled(filename: str, sha256: str) -> StateDict:
    """Load weights shipped in `models/weights/`, pinned by sha256."""
    return load_state_dict_file(BUNDLED_DIR / filename, sha256)


def torchvision_cache_path(weights: WeightsEnum) -> Path:
    """Where torch.hub keeps (or would keep) the file for these weights."""
    url: str = weights.url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def fetch_torchvision(weights: WeightsEnum) -> StateDict:
    """The state dict of torchvision weights from the hub cache, downloading only if missing."""
    path = torchvision_cache_path(weights)
    if not path.is_file():
        match = torch.hub.HASH_REGEX.search(path.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(weights.url, str(path), match.group(1) if match else None, progress=False)
        except (urllib.error.URLError, OSError, RuntimeError) as exc:
            raise WeightsUnavailable(
                f"torchvision weights {weights} are not cached at {path.name} in the torch hub cache "
                f"and cannot be downloaded ({type(exc).__name__}); pre-fetch them when building the "
                "image, mount a cache at $TORCH_HOME, or use weights: random for load tests"
            ) from exc
    return load_state_dict_file(path, None)
