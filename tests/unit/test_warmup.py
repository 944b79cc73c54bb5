"""A model replica runs its forward at batch 1 and at its batch cap before it reports ready, and measures
the forward's items/s by batch size to choose that cap."""

from __future__ import annotations

from typing import Any

import pytest

from deployments.args import ArtifactsArgs, LimitsArgs, ModelArgs
from deployments.batching import MEASURE_RUNS, choose_batch_cap
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


def live_cap(built: Any) -> int:
    """The cap the replica's batcher applies to its next batch."""
    cap: int = built._batcher.max_batch_size
    return cap


@pytest.mark.parametrize(
    ("name", "model"),
    [
        ("digits_cnn", {}),
        ("digits_detector", {}),
        ("digits_segmenter", {}),
        ("digits_dcgan", {}),
        ("digits_denoiser", {}),
        # Its forward at its batch cap takes seconds: `make test` only.
        pytest.param("photo_denoiser", {}, marks=pytest.mark.slow),
        ("moving_digits_lstm", {}),
        # torchvision models and their backends: seconds each (ONNX export), so `make test` only.
        pytest.param("resnet18", {"weights": "random", "backend": "channels_last"}, marks=pytest.mark.slow),
        pytest.param("mobilenet_v3_small", {"weights": "random", "backend": "onnx"}, marks=pytest.mark.slow),
        pytest.param("mobilenet_v3_small", {"weights": "random", "backend": "int8"}, marks=pytest.mark.slow),
    ],
)
def test_every_task_runs_its_forward_at_batch_1_and_at_its_cap_while_starting(
    forwards: list[int], name: str, model: dict[str, Any]
) -> None:
    built = replica(name, **model)
    batching = built.metadata()["batching"]
    # Batch 1, then each size measured in increasing order (the time budget may stop it before 8).
    assert forwards[0] == 1
    assert list(dict.fromkeys(forwards)) == [int(size) for size in batching["items_per_s"]]
    assert set(forwards) <= {1, 2, 4, 8}
    assert batching["measured_cap"] in forwards
    assert live_cap(built) == batching["measured_cap"]
    # Warm-up is not traffic: the replica's statistics start empty.
    assert built.stats()["execution_count"] == 0


def test_a_digits_replica_reports_its_measured_cap_and_curve() -> None:
    built = replica("digits_cnn")
    batching = built.metadata()["batching"]
    curve = {int(size): rate for size, rate in batching["items_per_s"].items()}
    assert sorted(curve) == [1, 2, 4, 8]  # a forward of a few ms: far inside the time budget
    assert all(rate > 0 for rate in curve.values())
    assert batching["measured_cap"] == choose_batch_cap(curve)
    # With a p99 target the controller starts at 1 and never goes past the measured cap.
    built.reconfigure({"target_p99_ms": 100.0})
    assert built.metadata()["batching"]["adaptive_cap"] == 1
    assert built._controller.max_batch_size == batching["measured_cap"]


def test_a_new_max_batch_size_is_measured_once_and_a_known_one_not_again(forwards: list[int]) -> None:
    built = replica("digits_cnn")
    built.reconfigure({"max_batch_size": 16})
    measured = len(forwards)
    built.reconfigure({"max_batch_size": 16, "batch_wait_timeout_s": 0.01})
    built.reconfigure({"max_batch_size": 8})
    assert len(forwards) == measured
    assert list(dict.fromkeys(forwards)) == [1, 2, 4, 8, 16]
    # For 16 the sizes known from the start are not run again: 16 alone, its untimed run and its timed rounds.
    after = forwards[forwards.index(16) :]
    assert set(after) == {16}
    assert len(after) >= 1 + MEASURE_RUNS
    assert set(built.metadata()["batching"]["items_per_s"]) == {"1", "2", "4", "8"}


def test_without_measuring_the_cap_is_max_batch_size_warmed_once(forwards: list[int]) -> None:
    built = replica("digits_cnn")
    forwards.clear()
    built.reconfigure({"max_batch_size": 32, "measure": False})
    built.reconfigure({"max_batch_size": 32, "measure": False, "batch_wait_timeout_s": 0.01})
    assert forwards == [32]
    assert live_cap(built) == 32
    assert "measured_cap" not in built.metadata()["batching"]


def test_warmup_can_be_turned_off_in_the_user_config(forwards: list[int]) -> None:
    built = replica("digits_cnn")
    forwards.clear()
    built.reconfigure({"max_batch_size": 32, "warmup": False})
    assert forwards == []
    # Nothing measured: the configured cap, as is.
    assert live_cap(built) == 32
    assert "measured_cap" not in built.metadata()["batching"]


def test_the_replica_answers_serves_health_check_without_running_the_model(forwards: list[int]) -> None:
    # Serve calls check_health every health_check_period_s; it also records the load-time gauge
    # again, which Ray would otherwise evict from the node's export.
    built = replica("digits_cnn")
    built.check_health()
    assert built.stats()["execution_count"] == 0
