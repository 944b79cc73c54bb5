"""docs/models.md is generated from the training reports: its figures are the reports' figures."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from models import docs


def test_the_models_page_states_what_the_training_reports_hold() -> None:
    page = docs.PAGE.read_text()
    assert docs.render(page) == page, "docs/models.md is stale: run python -m models.docs"


def test_rendering_replaces_each_generated_block_and_keeps_the_prose(tmp_path: Path) -> None:
    # The mechanism docs/benchmarks.md's generator shares: each block is its function of the source.
    blocks = {"one": lambda source: f"1 from {source.name}\n", "two-b": lambda source: "2\n"}
    page = "title\n<!-- generated: one -->\nstale\n<!-- end generated -->\nprose\n<!-- generated: two-b -->\n<!-- end generated -->\n"
    assert docs.render_blocks(page, blocks, tmp_path / "src") == (
        "title\n<!-- generated: one -->\n1 from src\n<!-- end generated -->\nprose\n<!-- generated: two-b -->\n2\n<!-- end generated -->\n"
    )


def test_a_page_naming_an_unknown_or_missing_block_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="generated blocks"):
        docs.render("<!-- generated: nonsense -->\n<!-- end generated -->\n")
    with pytest.raises(ValueError, match="generated blocks"):
        docs.render_blocks("<!-- generated: one -->\n<!-- end generated -->\n", {"one": str, "two": str}, tmp_path)


def test_every_bundled_model_has_a_row() -> None:
    bundled = docs.bundled_block(docs.WEIGHTS)
    rows = [line.split(" | ")[0].strip("| `") for line in bundled.splitlines()[2:]]
    assert rows == list(docs.BUNDLED)


SCENES = "300 digit scenes (seed 2) of the held-out split"


@pytest.mark.parametrize(
    ("report", "items", "stated"),
    [
        ({"held_out_accuracy": 0.99722, "held_out_size": 360}, "digits", "accuracy 99.72% on 360 held-out digits"),
        (
            {"held_out_map50": 0.98456, "held_out_scenes": 300, "held_out_ap50_per_class": {"0": 0.9262, "1": 0.9996}},
            "scenes",
            "mAP@0.5 (all-point AP as VOC 2010+, with COCO's greedy matching) 0.985 on 300 held-out scenes "
            "(AP per class 0.93 to 1.00)",
        ),
        (
            {"held_out_mean_iou": 0.9416, "held_out": SCENES, "held_out_iou": {"background": 0.9977, "1": 0.903}},
            "scenes",
            "mean IoU 0.942 on 300 held-out scenes (per class 0.903 to 0.998)",
        ),
        (
            {"recognition_rate": 0.996, "recognition": {"method": "digits_cnn (bundled) reads", "per_digit": 50,
                                                         "labels": list("0123456789")}},
            "samples",
            "`digits_cnn` reads the requested digit in 99.6% of 500 samples (50 per digit)",
        ),
        (
            {"noise_sigma": 0.3, "held_out": {"images": 720, "noisy_psnr_db": 12.699, "restored_psnr_db": 20.453,
                                              "psnr_gain_db": 7.754}},
            "images",
            "PSNR 12.70 dB noisy to 20.45 dB restored (+7.75 dB) on 720 held-out images at noise sigma 0.3",
        ),
        (
            {"held_out": {"image": "load_sample_image('flower.jpg') resized", "noise_sigma": 0.1,
                          "noisy_psnr_db": 20.878, "restored_psnr_db": 27.818, "psnr_gain_db": 6.94}},
            "photo",
            "PSNR 20.88 dB noisy to 27.82 dB restored (+6.94 dB) on one photo (`flower.jpg`) at noise sigma 0.1",
        ),
        (
            {"held_out_accuracy": 0.9979, "held_out_size": 480,
             "held_out_accuracy_by_format": {"mp4": 0.9979, "gif": 0.9979, "raw": 0.9979}},
            "clips",
            "accuracy 99.79% on 480 held-out clips, the same encoded as MP4 and as GIF",
        ),
        (
            {"held_out_accuracy": 0.99, "held_out_size": 480,
             "held_out_accuracy_by_format": {"mp4": 0.99, "gif": 0.98, "raw": 0.99}},
            "clips",
            "accuracy 99.00% on 480 held-out clips (MP4 99.00%, GIF 98.00%, raw frames 99.00%)",
        ),
    ],
)  # fmt: skip
def test_each_kind_of_report_states_its_held_out_figure(report: dict[str, Any], items: str, stated: str) -> None:
    assert docs.held_out(report, items) == stated


def _copy_weights(tmp_path: Path) -> Path:
    weights = tmp_path / "weights"
    shutil.copytree(docs.WEIGHTS, weights)
    return weights


def _edit(path: Path, change: dict[str, Any]) -> None:
    report = json.loads(path.read_text())
    report.update(change)
    path.write_text(json.dumps(report))


def test_a_changed_report_changes_the_page(tmp_path: Path) -> None:
    weights = _copy_weights(tmp_path)
    _edit(weights / "digits_cnn.json", {"held_out_accuracy": 0.9861})
    page = docs.PAGE.read_text()
    fresh = docs.render(page, weights)
    assert fresh != page
    assert "accuracy 98.61% on 360 held-out digits" in fresh


def test_reports_and_weights_that_disagree_are_refused(tmp_path: Path) -> None:
    weights = _copy_weights(tmp_path)
    _edit(weights / "digits_cnn.json", {"sha256": "0" * 64})
    with pytest.raises(ValueError, match=r"digits_cnn\.safetensors is not the file"):
        docs.bundled_block(weights)


def test_a_report_this_page_does_not_describe_is_refused(tmp_path: Path) -> None:
    weights = _copy_weights(tmp_path)
    (weights / "new_model.json").write_text(json.dumps({"model": "new_model", "held_out_accuracy": 1.0}))
    with pytest.raises(ValueError, match="new_model"):
        docs.reports(weights)
    with pytest.raises(ValueError, match="no held-out figure"):
        docs.held_out({"model": "new_model", "held_out_f1": 0.5}, "items")


def test_the_generator_loads_neither_torch_nor_ray_and_its_check_passes() -> None:
    code = (
        "import sys\nfrom models import docs\nsys.argv = ['models.docs', '--check']\ncode = docs.main()\n"
        "print(code, sorted(m for m in ('torch', 'torchvision', 'ray') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "0 []"
