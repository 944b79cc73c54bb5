"""The backends benchmark: a fixed parity image set, and its command end to end, tiny."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from benchmarks.backends import augmented_photos
from tests.serve_cluster import REPO


def test_augmented_photos_are_the_same_when_made_twice() -> None:
    first = augmented_photos("224x224", 12)
    assert first == augmented_photos("224x224", 12)
    assert len(set(first)) == 12
    assert {Image.open(io.BytesIO(data)).size for data in first} == {(224, 224)}


@pytest.mark.slow  # runs the benchmark command end to end
def test_backends_command_writes_parity_and_throughput_when_asked_with_out(tmp_path: Path) -> None:
    out = tmp_path / "backends.json"
    command = [
        sys.executable, "-m", "benchmarks.backends", "--model", "digits_cnn", "--backends", "int8",
        "--seconds", "0.2", "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "| top-1 agreement |" in done.stdout
    results = json.loads(out.read_text())
    assert [(r["model"], r["backend"]) for r in results["parity"]] == [("digits_cnn", "eager"), ("digits_cnn", "int8")]
    assert all(r["top1_agreement"] >= 0.99 and r["images"] >= 200 for r in results["parity"])
    assert [(r["backend"], r["batch"]) for r in results["throughput"]] == [
        ("eager", 1),
        ("eager", 16),
        ("int8", 1),
        ("int8", 16),
    ]
    assert results["versions"]["onnxruntime"]
