"""The `maas` command line against the real Serve app on 127.0.0.1, run in-process through main(argv)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from maas.cli import main
from models.training.scenes import digit_scenes
from tests.conftest import encode

BUNDLED = {
    "digits_cnn": "classification",
    "digits_detector": "detection",
    "digits_segmenter": "segmentation",
    "digits_dcgan": "generation",
    "digits_denoiser": "denoising",
    "moving_digits_lstm": "video_classification",
}


def lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def size_of(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


@pytest.fixture
def digit_folder(tmp_path: Path, digit_pngs: list[tuple[bytes, int]]) -> Path:
    """The twenty held-out digit PNGs in a folder, named by position and label."""
    folder = tmp_path / "digits"
    folder.mkdir()
    for i, (png, label) in enumerate(digit_pngs):
        (folder / f"{i:02d}_{label}.png").write_bytes(png)
    (folder / "README.txt").write_text("not an image")
    return folder


def test_predict_classifies_a_folder_and_writes_captioned_images_when_out_is_given(
    base_url: str, digit_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Twenty digits in batches of 8: one JSON line each, in file order, mostly right; one output image each."""
    out = tmp_path / "out"
    argv = ["--url", base_url, "predict", str(digit_folder), "-m", "digits_cnn", "-b", "8", "-p", "top_k=2"]
    assert main([*argv, "--json", "--out", str(out)]) == 0
    results = lines(capsys.readouterr().out)
    names = [Path(r["file"]).name for r in results]
    assert names == sorted(p.name for p in digit_folder.glob("*.png"))
    assert all(len(r["prediction"]["labels"]) == 2 for r in results)
    right = sum(
        r["prediction"]["labels"][0]["label"] == name.split("_")[1].removesuffix(".png")
        for r, name in zip(results, names, strict=True)
    )
    assert right >= 17
    assert sorted(p.name for p in out.iterdir()) == names
    assert size_of(out / names[0]) == size_of(digit_folder / names[0])


@pytest.mark.parametrize(
    ("model", "expected"),
    [("digits_detector", "detection"), ("digits_segmenter", "%"), ("digits_denoiser", "restored image")],
)
def test_predict_draws_each_tasks_answer_at_the_original_size_when_out_is_given(
    base_url: str, tmp_path: Path, model: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Boxes, mask overlays and restored images from the real models, one file per scene, table rows on stdout."""
    scenes = [s for s in digit_scenes("test", 20, seed=11) if len(s.labels) >= 2][:2]
    folder = tmp_path / "scenes"
    folder.mkdir()
    for i, scene in enumerate(scenes):
        (folder / f"scene{i}.png").write_bytes(encode(scene.image))
    out = tmp_path / "out"
    assert main(["--url", base_url, "predict", str(folder), "-m", model, "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["scene0.png", "scene1.png"]
    for i, scene in enumerate(scenes):
        assert size_of(out / f"scene{i}.png") == scene.image.size
    assert capsys.readouterr().out.count(expected) >= 2


def test_generate_writes_reproducible_pngs_named_by_seed_when_seeded(
    base_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Same seed and label, same files; the seed is printed."""
    first, again = tmp_path / "a", tmp_path / "b"
    for out in (first, again):
        argv = ["--url", base_url, "generate", "-m", "digits_dcgan", "--num", "3", "--seed", "7", "--label", "3"]
        assert main([*argv, "--out", str(out)]) == 0
        assert capsys.readouterr().out.startswith("seed 7\n")
    names = ["7-0.png", "7-1.png", "7-2.png"]
    assert sorted(p.name for p in first.iterdir()) == names
    assert [(first / n).read_bytes() for n in names] == [(again / n).read_bytes() for n in names]


def test_models_json_lists_every_served_model_with_its_task(base_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The default app's models, each with task, weights and batching."""
    assert main(["--url", base_url, "models", "--json"]) == 0
    entries = {e["name"]: e for e in json.loads(capsys.readouterr().out)}
    assert {name: entries[name]["task"] for name in BUNDLED} == BUNDLED
    assert entries["resnet18"]["weights"]["source"] == "random"
    assert all("max_batch_size" in e["batching"] for e in entries.values())
    assert main(["--url", base_url, "models"]) == 0
    assert "digits_segmenter" in capsys.readouterr().out


def test_explain_writes_overlays_of_the_original_size(
    base_url: str, digit_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Grad-CAM overlays and heatmaps for two digits."""
    files = sorted(digit_folder.glob("*.png"))[:2]
    out = tmp_path / "maps"
    assert main(["--url", base_url, "explain", *map(str, files), "-m", "digits_cnn", "--heatmap", "-o", str(out)]) == 0
    for file in files:
        assert size_of(out / file.name) == size_of(file)
        assert (out / f"{file.stem}.heatmap.png").is_file()
    assert capsys.readouterr().out.count("grad_cam") == 2


def test_annotate_reports_results_and_a_failing_feature_with_exit_1(
    base_url: str, digit_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Three features on one image: two results, one model_not_found in its own slot."""
    image = sorted(digit_folder.glob("*.png"))[0]
    argv = ["--url", base_url, "annotate", str(image), "-f", "digits_cnn:top_k=2", "-f", "digits_segmenter"]
    assert main([*argv, "-f", "no_such_model", "--json"]) == 1
    (line,) = lines(capsys.readouterr().out)
    features = line["features"]
    assert len(features[0]["result"]["labels"]) == 2
    assert "mask" in features[1]["result"]
    assert features[2]["error"]["code"] == "model_not_found"


def test_unknown_model_exits_1_with_the_servers_error(
    base_url: str, digit_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The server's code and message, no traceback."""
    assert main(["--url", base_url, "predict", str(digit_folder), "-m", "no_such_model"]) == 1
    err = capsys.readouterr().err
    assert "model_not_found" in err
    assert "Traceback" not in err


def test_bench_measures_two_seconds_of_closed_loop_load(
    base_url: str, digit_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Four workers for 2 s: requests answered, percentiles in order, client CPU reported."""
    image = sorted(digit_folder.glob("*.png"))[0]
    assert main(["bench", base_url, "-m", "digits_cnn", "--image", str(image), "-c", "4", "-d", "2", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["url"] == base_url
    assert summary["ok"] >= 4
    assert summary["errors"] == {}
    latency = summary["latency_ms"]
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"]
    assert 2.0 <= summary["elapsed_s"] < 2.0 + 60
    assert summary["client_cpu_s"] > 0
