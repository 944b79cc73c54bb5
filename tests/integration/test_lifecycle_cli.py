"""Training and the model lifecycle through the `maas` command line, against the real Serve app on
127.0.0.1 (run in-process through main(argv)): upload a folder, train from digits_cnn following
the job's events, read the report, list versions, roll a second version out and back."""

from __future__ import annotations

import json
import tarfile
import uuid
from pathlib import Path
from typing import Any

import pytest

from contract.lifecycle import Dataset, ModelVersion, Rollout, TrainingJob
from maas import VisionClient
from maas.cli import main
from tests.lifecycle import BROKEN, CLASSES, digit_folder, needs, require_served

# A job here fine-tunes digits_cnn on about 29 of the 36 images (the rest held out), 8 at a time
# for 5 epochs: 20 optimizer steps, seconds of work; starting its Ray Train workers takes longer.
SETTINGS = ("--epochs", "5", "--batch-size", "8")


@pytest.fixture(autouse=True)
def wide(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables as wide as their rows: ids and versions are checked whole."""
    monkeypatch.setenv("COLUMNS", "200")


def run(capsys: pytest.CaptureFixture[str], *argv: str, status: int = 0) -> tuple[str, str]:
    """`maas ARGV` in-process: its (stdout, stderr), after checking its exit status."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert code == status, f"maas {' '.join(argv)} exited {code}: {err}"
    assert "Traceback" not in err
    return out, err


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def fresh_name() -> str:
    """A model name no earlier run used (the model store outlives the session's app)."""
    return f"cli_digits_{uuid.uuid4().hex[:8]}"


@pytest.fixture
def dataset(base_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Dataset:
    """The digit folder, uploaded through the CLI."""
    require_served(base_url, "datasets")
    out, _ = run(capsys, "--url", base_url, "datasets", "upload", str(digit_folder(tmp_path / "digits")), "--json")
    return Dataset.model_validate_json(out)


@needs("datasets")
def test_datasets_upload_list_show_and_delete_a_folder(
    base_url: str, dataset: Dataset, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The folder's images by class, the broken file named, the hidden one left out; the same folder
    again is the same data set; deleted, it is gone (404)."""
    assert dataset.classes == dict.fromkeys(CLASSES, 12)
    assert dataset.images == 36
    assert [item.file for item in dataset.rejected] == [BROKEN]
    again, _ = run(capsys, "--url", base_url, "datasets", "upload", str(digit_folder(tmp_path / "again")))
    assert f"data set {dataset.id}: 36 images in 3 classes" in again
    assert BROKEN in again  # the table of files not kept
    # The folder as a tar.gz archive: other bytes, so another data set, of the same images.
    archive = tmp_path / "digits.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for label in CLASSES:
            tar.add(tmp_path / "digits" / label, arcname=label)
    out, _ = run(capsys, "--url", base_url, "datasets", "upload", str(archive), "--json")
    from_archive = Dataset.model_validate_json(out)
    assert (from_archive.classes, [item.file for item in from_archive.rejected]) == (dataset.classes, [BROKEN])
    listed, _ = run(capsys, "--url", base_url, "datasets", "list", "--json")
    assert {dataset.id, from_archive.id} <= {item["id"] for item in json.loads(listed)}
    shown, _ = run(capsys, "--url", base_url, "datasets", "show", dataset.id)
    assert all(label in shown for label in CLASSES)
    run(capsys, "--url", base_url, "datasets", "delete", from_archive.id)
    run(capsys, "--url", base_url, "datasets", "delete", dataset.id)
    _, err = run(capsys, "--url", base_url, "datasets", "show", dataset.id, status=1)
    assert "(HTTP 404)" in err


@needs("datasets")
def test_an_archive_of_one_class_is_refused_with_the_servers_error(
    base_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    require_served(base_url, "datasets")
    folder = digit_folder(tmp_path / "digits")
    for label in list(CLASSES)[1:]:
        for file in (folder / label).iterdir():
            file.unlink()
        (folder / label).rmdir()
    _, err = run(capsys, "--url", base_url, "datasets", "upload", str(folder), status=1)
    assert "(HTTP 4" in err


@pytest.mark.slow
@needs("datasets", "jobs")
def test_train_follow_prints_live_progress_then_the_report_as_tables(
    base_url: str, dataset: Dataset, capsys: pytest.CaptureFixture[str]
) -> None:
    require_served(base_url, "jobs")
    name = fresh_name()
    argv = ["--url", base_url, "train", "--name", name, "--base-model", "digits_cnn", "--dataset", dataset.id]
    out, err = run(capsys, *argv, *SETTINGS, "--follow")
    assert f"training {name} from digits_cnn" in err
    assert "running · epoch" in err  # a line per change (stderr is no terminal here)
    for heading in ("held-out evaluation", "per class", "confusion matrix", "training curve"):
        assert heading in out
    assert all(label in out for label in CLASSES)
    listed, _ = run(capsys, "--url", base_url, "jobs", "list", "--json")
    (job,) = [TrainingJob.model_validate(item) for item in json.loads(listed) if item["request"]["name"] == name]
    assert job.status == "succeeded"
    assert job.report is not None
    assert sum(map(sum, job.report.confusion_matrix)) == job.report.val_images
    assert job.report.accuracy >= 0.8
    shown, _ = run(capsys, "--url", base_url, "jobs", "show", job.id, "--json")
    assert TrainingJob.model_validate_json(shown).version == job.version


@pytest.mark.slow
@needs("datasets", "jobs")
def test_a_cancelled_job_ends_cancelled_and_cannot_be_cancelled_again(
    base_url: str, dataset: Dataset, capsys: pytest.CaptureFixture[str]
) -> None:
    require_served(base_url, "jobs")
    argv = ["--url", base_url, "train", "--name", fresh_name(), "--base-model", "digits_cnn", "--dataset", dataset.id]
    out, _ = run(capsys, *argv, "--epochs", "200", "--json")
    job = TrainingJob.model_validate_json(out)
    assert job.status == "queued"
    cancelled, _ = run(capsys, "--url", base_url, "jobs", "cancel", job.id, "--json")
    assert TrainingJob.model_validate_json(cancelled).status == "cancelled"
    _, err = run(capsys, "--url", base_url, "jobs", "cancel", job.id, status=1)
    assert "(HTTP 409)" in err
    # Following a finished job prints it at once; a cancelled one exits 1.
    _, err = run(capsys, "--url", base_url, "jobs", "show", job.id, "--follow", status=1)
    assert f"job {job.id} cancelled" in err


@pytest.mark.slow
@needs("datasets", "jobs", "versions")
def test_versions_roll_out_as_a_canary_and_back_from_the_command_line(
    base_url: str,
    dataset: Dataset,
    digit_pngs: list[tuple[bytes, int]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The first version is stable; a second, rolled out at 20%, is the canary; rolled back, it is gone."""
    require_served(base_url, "jobs", "versions")
    name = fresh_name()
    argv = ["--url", base_url, "train", "--name", name, "--base-model", "digits_cnn", "--dataset", dataset.id]
    made: list[str] = []
    for seed in ("0", "1"):
        out, _ = run(capsys, *argv, *SETTINGS, "--seed", seed, "--follow", "--json")
        events = json_lines(out)
        assert events[-2]["event"] == "done"  # then the final job, on a line of its own
        final = TrainingJob.model_validate(events[-1])
        assert final.status == "succeeded"
        assert final.version is not None
        made.append(final.version)
    first, second = made
    assert first != second  # another seed, other weights, another hash

    listed, _ = run(capsys, "--url", base_url, "versions", name, "--json")
    states = {v.version: (v.state, v.percent) for v in map(ModelVersion.model_validate, json.loads(listed))}
    assert states == {first: ("stable", 100), second: ("inactive", 0)}
    table, _ = run(capsys, "--url", base_url, "versions", name)
    assert first in table
    assert "stable" in table

    out, _ = run(capsys, "--url", base_url, "rollout", name, second, "--percent", "20", "--json")
    canary = Rollout.model_validate_json(out)
    assert (canary.name, canary.stable, canary.canary, canary.percent) == (name, first, second, 20)
    shown, _ = run(capsys, "--url", base_url, "rollout", name)
    assert f"{second} (20%)" in shown
    assert f"{first} (80%)" in shown

    # Each version answers for itself on its own route, whatever the rollout.
    png = next(png for png, label in digit_pngs if label in CLASSES.values())
    with VisionClient(base_url) as client:
        for version in made:
            assert client.predict(name, png, version=version)["model_version"] == version
    image = tmp_path / "digit.png"
    image.write_bytes(png)
    out, _ = run(capsys, "--url", base_url, "predict", str(image), "-m", name, "--model-version", second, "--json")
    assert json_lines(out)[0]["prediction"]["labels"][0]["label"] in CLASSES

    out, _ = run(capsys, "--url", base_url, "rollback", name, "--json")
    back = Rollout.model_validate_json(out)
    assert (back.stable, back.canary, back.percent) == (first, None, 0)
