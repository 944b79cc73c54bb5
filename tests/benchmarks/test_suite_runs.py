"""The benchmark command end to end, tiny: raw baseline, a peer and vision-maas under hey."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.serve_cluster import REPO, free_port


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("hey") is None, reason="the load generator hey is not installed: `make tools` installs it"
)
def test_benchmark_suite_runs_end_to_end_and_reports(tmp_path: Path) -> None:
    command = [
        sys.executable, "-m", "benchmarks.run", "--models", "digits_cnn", "--sizes", "224x224",
        "--servers", "fastapi", "vision-maas", "--concurrency", "1", "4", "--step-s", "2", "--warmup-s", "1",
        "--raw-s", "2", "--open-loop", "0.5", "--repeats", "1", "--replicas", "1", "--port", str(free_port()), "--out", str(tmp_path),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    (case,) = results["cases"]
    assert [r["batch"] for r in case["raw"]] == [1, 16]
    assert all(r["images_per_s"] > 0 for r in case["raw"])
    assert set(case["servers"]) == {"fastapi", "vision-maas"}
    for name, server in case["servers"].items():
        steps = [(r["mode"], r["step"]) for r in server["rows"]]
        assert steps == [("closed", 1), ("closed", 4), ("open", 0.5)], name
        for r in server["rows"]:
            assert r["ok"] > 0, (name, r)
            assert r["errors"] == 0, (name, r)
            assert r["server_cpu_ms_per_image"] > 0
            # Answers over measured time (first request sent to last answer), not the nominal step.
            assert r["throughput"] == pytest.approx(r["ok"] / r["measured_s"]), (name, r)
            assert 0.0 <= r["tail_share"] < 1.0
        assert server["cold_start_s"] > 0
    # The server's own processes, Ray's included, were counted.
    assert len(case["servers"]["vision-maas"]["rss_bytes"]) > 3
    markdown = (tmp_path / "results.md").read_text()
    assert "| target | measured | bar | met |" in markdown
    assert (tmp_path / "digits_cnn_224x224_throughput.png").exists()
