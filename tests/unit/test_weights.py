"""Weight sources: pins, safetensors, weights-only loading, torchvision cache and offline errors."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from models import weights as wsrc
from models.registry import get_spec


def test_torchvision_weights_fail_with_a_clear_message_when_offline_and_uncached(offline: Path) -> None:
    spec = get_spec("resnet18", weights="IMAGENET1K_V1")
    with pytest.raises(wsrc.WeightsUnavailable, match=r"ResNet18_Weights\.IMAGENET1K_V1.*weights: random"):
        spec.build()


def test_torchvision_weights_load_from_the_cache_when_offline(offline: Path) -> None:
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    reference = torchvision.models.resnet18()
    path = wsrc.torchvision_cache_path(weights)
    path.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), path)
    spec = get_spec("resnet18", weights="ResNet18_Weights.IMAGENET1K_V1")
    model = spec.build()
    assert spec.weights.label == "torchvision:ResNet18_Weights.IMAGENET1K_V1"
    assert torch.equal(model.fc.weight, reference.fc.weight)


def test_unknown_torchvision_weights_name_is_refused_with_the_choices() -> None:
    with pytest.raises(wsrc.WeightsError, match="IMAGENET1K_V1"):
        get_spec("resnet18", weights="IMAGENET9K")


def test_weights_file_loads_when_its_sha256_pin_matches(tmp_path: Path) -> None:
    reference = torchvision.models.resnet18()
    path = tmp_path / "resnet18.safetensors"
    save_file(reference.state_dict(), str(path))
    spec = get_spec("resnet18", weights=str(path), sha256=wsrc.sha256_file(path), name="my_resnet")
    model = spec.build()
    assert spec.weights.source == "file"
    assert spec.weights.version == wsrc.sha256_file(path)[:12]
    assert torch.equal(model.conv1.weight, reference.conv1.weight)


def test_weights_file_is_refused_when_a_byte_changes(tmp_path: Path) -> None:
    path = tmp_path / "resnet18.safetensors"
    save_file(torchvision.models.resnet18().state_dict(), str(path))
    pin = wsrc.sha256_file(path)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(wsrc.WeightsIntegrityError, match="sha256"):
        get_spec("resnet18", weights=str(path), sha256=pin).build()


def test_weights_file_needs_a_pin() -> None:
    with pytest.raises(wsrc.WeightsError, match="sha256 pin"):
        get_spec("resnet18", weights="/models/resnet18.safetensors")


class _Exploit:
    """Unpickling this would create a marker file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, ...]]:
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "weights.pt"
    with path.open("wb") as fh:
        pickle.dump({"fc.weight": _Exploit(marker)}, fh)
    with pytest.raises(wsrc.WeightsIntegrityError, match="refused"):
        wsrc.load_state_dict_file(path, None)
    assert not marker.exists()


def test_bundled_weights_are_refused_when_the_pin_differs() -> None:
    with pytest.raises(wsrc.WeightsIntegrityError):
        wsrc.load_bundled("digits_cnn.safetensors", "0" * 64)
