"""Video classification: the bundled moving-digits LSTM and every torchvision video model."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from safetensors.torch import save_file

from contract.params import ClassificationParams
from models import video
from models.registry import Item, ModelSpec, Task, get_entry, get_spec, list_models
from models.training.moving_digits import DIRECTIONS, VARIED_LENGTH, make_clips, varied_clips
from models.training.train_moving_digits_lstm import HELD_OUT_CLIPS, classify_encoded
from models.video_io import decode_clip, encode_clip
from models.weights import BUNDLED_DIR, WeightsError, WeightsUnavailable, sha256_file

TORCHVISION_VIDEO = torchvision.models.list_models(module=torchvision.models.video)
# One in `make test-fast` (about 2 s for a random-weights forward); the rest, marked slow, in `make test`.
FAST_VIDEO = {"r3d_18"}


def _answers(spec: ModelSpec, outputs: Sequence[Any], top_ks: list[int]) -> list[dict[str, Any]]:
    """The classifier's answers, one item per top_k, as the server sends them."""
    items = [Item(ClassificationParams(top_k=k)) for k in top_ks]
    return [answer.model_dump(mode="json") for answer in spec.postprocess(outputs, items)]


def _frames(count: int = 5, size: tuple[int, int] = (80, 60)) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(count)]


def _clip_input(spec: ModelSpec, frames: list[Image.Image]) -> torch.Tensor:
    if spec.preprocess_clip is None:
        raise AssertionError(f"{spec.name} has no clip preprocess")
    return spec.preprocess_clip([f.convert(spec.image_mode) for f in frames])


def test_every_torchvision_video_model_and_moving_digits_are_registered_as_video() -> None:
    names = set(list_models(Task.VIDEO_CLASSIFICATION))
    assert {*TORCHVISION_VIDEO, "moving_digits_lstm"} <= names
    assert {get_entry(n).family for n in TORCHVISION_VIDEO} == {"torchvision.video"}
    assert get_entry("moving_digits_lstm").family == "bundled.digits"


@pytest.mark.parametrize("name", [*TORCHVISION_VIDEO, "moving_digits_lstm"])
def test_every_video_spec_preprocesses_a_clip_to_its_input_shape(name: str) -> None:
    spec = get_spec(name, weights="random")
    assert spec.task == Task.VIDEO_CLASSIFICATION
    assert spec.weights.source == "random"
    assert spec.description
    assert len(spec.categories) == spec.outputs[0].shape[-1]
    x = _clip_input(spec, _frames())
    assert tuple(x.shape) == spec.input_shape
    assert x.shape[0] == spec.clip_length
    assert x.dtype == torch.float32
    with pytest.raises(ValueError, match="send a clip"):
        spec.preprocess(_frames(1)[0])


def test_clip_lengths_are_the_ones_the_weights_were_evaluated_with() -> None:
    lengths = {name: get_spec(name, weights="random").clip_length for name in TORCHVISION_VIDEO}
    assert lengths == {
        "mc3_18": 16,
        "r2plus1d_18": 16,
        "r3d_18": 16,
        "mvit_v1_b": 16,
        "mvit_v2_s": 16,
        "s3d": 128,
        "swin3d_t": 32,
        "swin3d_s": 32,
        "swin3d_b": 32,
    }


@pytest.mark.parametrize(
    "name", [n if n in FAST_VIDEO else pytest.param(n, marks=pytest.mark.slow) for n in TORCHVISION_VIDEO]
)
def test_every_torchvision_video_model_returns_one_result_per_clip(name: str) -> None:
    spec = get_spec(name, weights="random")
    module = spec.build()
    assert not module.training
    with torch.inference_mode():
        outputs = spec.forward(module, [_clip_input(spec, _frames(5)), _clip_input(spec, _frames(3, (64, 96)))])
    assert len(outputs) == 2
    results = _answers(spec, outputs, [3, 1])
    assert [len(r["labels"]) for r in results] == [3, 1]
    assert results[0]["labels"][0]["label"] in spec.categories
    tensors = spec.tensor_outputs(outputs)
    for out in spec.outputs:
        assert tensors[out.name].shape == (2, *out.shape[1:])


def test_torchvision_clip_preprocess_is_the_weights_video_transform() -> None:
    spec = get_spec("r3d_18", weights="random")
    weights = torchvision.models.video.R3D_18_Weights.DEFAULT
    frames = _frames(16)
    video_tensor = torch.stack([torch.as_tensor(np.array(f)).permute(2, 0, 1) for f in frames])
    expected = weights.transforms()(video_tensor).permute(1, 0, 2, 3)
    assert torch.equal(_clip_input(spec, frames), expected)
    assert spec.categories == tuple(weights.meta["categories"])
    assert spec.input_size == (112, 112)


def test_a_short_clip_is_stretched_evenly_to_the_clip_length() -> None:
    frames = [Image.new("L", (48, 48), 10 * i) for i in range(4)]
    picked = video.sample_clip(frames, 8, "L")
    assert [f.getpixel((0, 0)) for f in picked] == [0, 0, 10, 10, 20, 20, 30, 30]


def test_frames_of_different_sizes_are_a_value_error() -> None:
    spec = get_spec("moving_digits_lstm")
    with pytest.raises(ValueError, match="same size"):
        _clip_input(spec, [*_frames(3), Image.new("RGB", (10, 10))])


def test_default_torchvision_weights_fail_clearly_when_offline(offline: Path) -> None:
    spec = get_spec("mc3_18")
    assert spec.weights.label == "torchvision:MC3_18_Weights.KINETICS400_V1"
    with pytest.raises(WeightsUnavailable, match="not cached"):
        spec.build()


def test_unknown_weights_and_unpinned_files_are_refused() -> None:
    with pytest.raises(WeightsError, match="choose one of DEFAULT, KINETICS400_V1"):
        get_spec("r3d_18", weights="IMAGENET1K_V1")
    with pytest.raises(WeightsError, match="needs a sha256 pin"):
        get_spec("r3d_18", weights="/tmp/weights.safetensors")
    with pytest.raises(WeightsError, match="'bundled' \\(default\\) or 'random'"):
        get_spec("moving_digits_lstm", weights="DEFAULT")


def test_pinned_weights_file_is_loaded(tmp_path: Path) -> None:
    reference = get_spec("mc3_18", weights="random").build()
    path = tmp_path / "mc3.safetensors"
    save_file(reference.state_dict(), str(path))
    spec = get_spec("mc3_18", weights=str(path), sha256=sha256_file(path))
    assert spec.weights.source == "file"
    loaded = spec.build()
    assert all(
        torch.equal(a, b) for a, b in zip(reference.state_dict().values(), loaded.state_dict().values(), strict=True)
    )


@pytest.fixture(scope="module")
def moving_digits() -> tuple[ModelSpec, torch.nn.Module]:
    spec = get_spec("moving_digits_lstm")
    return spec, spec.build()


def test_moving_digits_answers_with_direction_labels(moving_digits: tuple[ModelSpec, torch.nn.Module]) -> None:
    spec, module = moving_digits
    assert spec.categories == DIRECTIONS
    assert spec.input_shape == (16, 1, 48, 48)
    clips, directions, _ = make_clips("test", 2, seed=5)
    frames = decode_clip(encode_clip([Image.fromarray(f) for f in clips[0]], "mp4"), mode=spec.image_mode)
    with torch.inference_mode():
        outputs = spec.forward(module, [_clip_input(spec, frames), _clip_input(spec, frames[:5])])
    results = _answers(spec, outputs, [8, 2])
    assert [len(r["labels"]) for r in results] == [8, 2]
    assert results[0]["labels"][0]["label"] == DIRECTIONS[int(directions[0])]
    assert sum(item["score"] for item in results[0]["labels"]) == pytest.approx(1.0, abs=1e-4)
    assert set(spec.tensor_outputs(outputs)) == {"probabilities", "logits"}


@pytest.mark.slow
def test_moving_digits_held_out_accuracy_is_at_least_95_percent_through_mp4_and_gif(
    moving_digits: tuple[ModelSpec, torch.nn.Module],
) -> None:
    spec, module = moving_digits
    clips, directions, _ = make_clips("test", HELD_OUT_CLIPS)
    report = json.loads((BUNDLED_DIR / "moving_digits_lstm.json").read_text())
    for fmt in ("mp4", "gif"):
        # Encoded, decoded by decode_clip and preprocessed by the spec: the server's path.
        predictions = classify_encoded(spec, module, clips, fmt)
        accuracy = float(np.mean(np.array(predictions) == directions))
        assert accuracy >= 0.95, fmt
        assert accuracy == pytest.approx(report["held_out_accuracy_by_format"][fmt], abs=0.01)
    assert report["held_out_size"] >= 400


def test_moving_digits_weights_pin_file_and_training_report_agree() -> None:
    report = json.loads((BUNDLED_DIR / "moving_digits_lstm.json").read_text())
    actual = sha256_file(BUNDLED_DIR / video.WEIGHTS_FILE)
    assert actual == video.WEIGHTS_SHA256 == report["sha256"]
    assert report["held_out_accuracy"] >= 0.95
    assert (BUNDLED_DIR / video.WEIGHTS_FILE).stat().st_size < 1_000_000


def test_varied_clips_are_seeded_balanced_and_span_their_lengths_and_canvases() -> None:
    clips, directions = varied_clips("fit", 64, seed=3)
    again, _ = varied_clips("fit", 64, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(clips, again, strict=True))
    assert np.bincount(directions, minlength=len(DIRECTIONS)).tolist() == [8] * len(DIRECTIONS)
    lengths = {len(c) for c in clips}
    assert VARIED_LENGTH[0] <= min(lengths) < max(lengths) <= VARIED_LENGTH[1]
    assert len(lengths) > 5
    assert {c.shape[1] for c in clips} == {48, 96, 128}
    assert all(c.shape[1] == c.shape[2] and c.dtype == np.uint8 for c in clips)
