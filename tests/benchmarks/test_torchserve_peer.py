"""The TorchServe peer for real: batched answers equal the shared pipeline's, and stopping leaves nothing behind."""

from __future__ import annotations

import re
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest

from benchmarks.images import jpeg_images
from benchmarks.pipeline import Pipeline
from benchmarks.servers import Running, make_server
from tests.serve_cluster import free_port


def top_label(result: dict[str, object]) -> object:
    labels = result["labels"]
    assert isinstance(labels, list)
    return labels[0]["label"]


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("java") is None, reason="TorchServe needs a Java runtime: `make tools` installs default-jre-headless"
)
def test_torchserve_peer_batches_the_pipelines_answers_and_stops_cleanly(tmp_path: Path) -> None:
    images = jpeg_images("224x224")[:4]
    server = make_server("torchserve", "digits_cnn", free_port(), 1, 8, 0.005, 1)
    running = Running(server, tmp_path / "torchserve.log")
    try:
        running.wait_ready(images[0], timeout_s=120)
        names = {proc.name() for proc in running.processes()}
        assert "java" in names, names
        workers = [p for p in running.processes() if any("model_service_worker" in part for part in p.cmdline())]
        assert len(workers) == 1
        # The workers run this venv's Python (the handler imports `benchmarks` from it).
        assert Path(workers[0].cmdline()[0]).parent == Path(sys.executable).parent

        def post(image: bytes) -> httpx.Response:
            return httpx.post(server.url, content=image, headers={"Content-Type": "image/jpeg"}, timeout=60)

        with ThreadPoolExecutor(len(images)) as pool:
            responses = list(pool.map(post, images))
        tree = running.processes()
    finally:
        running.stop()

    expected = Pipeline("digits_cnn", decoder="pil")(images)
    for response, want in zip(responses, expected, strict=True):
        assert response.status_code == 200, response.text
        (got,) = response.json()["predictions"]
        assert top_label(got) == top_label(want)
    # Nothing of it is left: not the launcher, Java or a worker, nor one orphaned outside the tree.
    assert not [proc for proc in tree if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE]
    match = re.search(r"TorchServe in (\S+):", (tmp_path / "torchserve.log").read_text())
    assert match, "the peer prints its temp dir"
    work = match.group(1)
    left = [p for p in psutil.process_iter(["cmdline"]) if any(work in part for part in p.info["cmdline"] or [])]
    assert not left
    assert not Path(work).exists()
