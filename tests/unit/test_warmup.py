"""A model replica runs its forward at batch 1 and at its batch cap before it reports ready."""

from __future__ import annotations

from typing import Any

import pytest

from deployments.args import ArtifactsArgs, LimitsArgs, ModelArgs
from deployments.image_model import ImageModel

Replica = ImageModel  # the class Serve wraps, built here without Serve


@pytest.fixture
def forwards(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The batch size of every forward any replica runs."""
    sizes: list[int] = []
    original = Replica._forward

    def counted(self: Any, tensors: list[Any]) -> list[Any]:
        sizes.append(len(tensors))
        result: list[Any] = original(self, tensors)
        return result

    monkeypatch.setattr(Replica, "_forward", counted)
    return sizes


def replica(name: str, **model: Any) -> Any:
    return Replica(ModelArgs(name=name, **model), LimitsArgs(), ArtifactsArgs())


@pytest.mark.parametrize(
    ("name", "model"),
    [
        ("digits_cnn", {}),
        ("digits_detector", {}),
        ("digits_segmenter", {}),
        ("digits_dcgan", {}),
        ("digits_denoiser", {}),
        ("photo_denoiser", {}),
        ("moving_digits_lstm", {}),
        ("resnet18", {"weights": "random", "backend": "channels_last"}),
        ("mobilenet_v3_small", {"weights": "random", "backend": "onnx"}),
        ("mobilenet_v3_small", {"weights": "random", "backend": "int8"}),
    ],
)
def test_every_task_runs_its_forward_at_batch_1_and_the_default_cap_while_starting(
    forwards: list[int], name: str, model: dict[str, Any]
) -> None:
    built = replica(name, **model)
    assert forwards == [1, 8]
    # Warm-up is not traffic: the replica's statistics start empty.
    assert built.stats()["execution_count"] == 0


def test_a_new_cap_is_warmed_once_and_a_known_one_not_again(forwards: list[int]) -> None:
    built = replica("digits_cnn")
    built.reconfigure({"max_batch_size": 16})
    built.reconfigure({"max_batch_size": 16, "batch_wait_timeout_s": 0.01})
    built.reconfigure({"max_batch_size": 8})
    assert forwards == [1, 8, 16]


def test_warmup_can_be_turned_off_in_the_user_config(forwards: list[int]) -> None:
    built = replica("digits_cnn")
    forwards.clear()
    built.reconfigure({"max_batch_size": 32, "warmup": False})
    assert forwards == []


def test_the_replica_answers_serves_health_check_without_running_the_model(forwards: list[int]) -> None:
    # Serve calls check_health every health_check_period_s; it also records the load-time gauge
    # again, which Ray would otherwise evict from the node's export.
    built = replica("digits_cnn")
    built.check_health()
    assert built.stats()["execution_count"] == 0
