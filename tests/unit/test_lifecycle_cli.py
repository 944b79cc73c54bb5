"""The `maas` lifecycle commands without a server: the tables they print (reports, versions,
rollouts), and the command lines refused before any request. The commands against the real
server are in tests/integration/test_lifecycle_cli.py."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest
from rich.console import Console
from rich.table import Table

from contract.lifecycle import (
    ClassMetrics,
    CurvePoint,
    Dataset,
    EvaluationReport,
    ModelVersion,
    Progress,
    RejectedFile,
    Rollout,
    TrainingJob,
    TrainingJobRequest,
)
from maas import cli
from maas.cli import (
    dataset_tables,
    describe_progress,
    job_tables,
    jobs_table,
    main,
    report_tables,
    rollout_table,
    versions_table,
)
from maas.client import VisionClient

V1, V2 = "0123456789ab", "ba9876543210"
REPORT = EvaluationReport(
    accuracy=0.9,
    macro_precision=0.8889,
    macro_recall=0.9167,
    macro_f1=0.8952,
    per_class={
        "circle": ClassMetrics(precision=1.0, recall=0.8333, f1=0.9091, support=6),
        "square": ClassMetrics(precision=0.6667, recall=1.0, f1=0.8, support=2),
        "star": ClassMetrics(precision=1.0, recall=1.0, f1=1.0, support=2),
    },
    labels=["circle", "square", "star"],
    confusion_matrix=[[5, 1, 0], [0, 2, 0], [0, 0, 2]],
    curve=[CurvePoint(epoch=1, loss=0.9, val_accuracy=0.5), CurvePoint(epoch=2, loss=0.31, val_accuracy=0.9)],
    train_images=40,
    val_images=10,
)
REQUEST = TrainingJobRequest(name="shapes", base_model="digits_cnn", dataset="0123456789abcdef", epochs=2)


def text(*tables: Table) -> list[str]:
    """The tables as a wide terminal shows them, line by line, without colour."""
    console = Console(width=200, record=True, color_system=None)
    for table in tables:
        console.print(table)
    return console.export_text().splitlines()


def cells(line: str) -> list[str]:
    """A table row's cells (rich draws the borders with │, and the header's with ┃)."""
    return [cell.strip() for cell in line.replace("┃", "│").strip().strip("│").split("│")]


def rows_of(lines: list[str], first: str) -> list[list[str]]:
    return [cells(line) for line in lines if "│" in line and cells(line)[0] == first]


def test_report_prints_summary_per_class_scores_confusion_matrix_and_curve() -> None:
    lines = text(*report_tables(REPORT))
    assert rows_of(lines, "accuracy") == [["accuracy", "0.900"]]
    assert rows_of(lines, "macro F1") == [["macro F1", "0.895"]]
    assert rows_of(lines, "images") == [["images", "40 trained on, 10 held out"]]
    # Per class, then the matrix's row of the same label: true circles, five right and one taken for a square.
    assert rows_of(lines, "circle") == [["circle", "1.000", "0.833", "0.909", "6"], ["circle", "5", "1", "0"]]
    assert rows_of(lines, "square") == [["square", "0.667", "1.000", "0.800", "2"], ["square", "0", "2", "0"]]
    header = next(cells(line) for line in lines if "true \\ predicted" in line)
    assert header == ["true \\ predicted", "circle", "square", "star"]
    assert rows_of(lines, "2") == [["2", "0.3100", "0.900"]]  # the curve's last epoch


def test_confusion_matrix_marks_the_diagonal_right_and_the_misses_red() -> None:
    matrix = report_tables(REPORT)[2]
    styles = [[str(cell.style) for cell in column.cells] for column in matrix.columns[1:]]  # type: ignore[attr-defined]
    assert styles[0] == ["bold green", "dim", "dim"]  # predicted circle: right once per true circle, never otherwise
    assert styles[1] == ["red", "bold green", "dim"]


def test_job_shows_where_it_is_then_its_report_once_done() -> None:
    running = TrainingJob(
        id="j1",
        status="running",
        request=REQUEST,
        created=0.0,
        progress=Progress(epoch=1, epochs=2, step=7, loss=0.51234, val_accuracy=0.75, elapsed_s=3.2, eta_s=4.0),
    )
    assert (
        describe_progress(running) == "running · epoch 1/2, step 7 · loss 0.5123 · val accuracy 0.750 · 3 s · ETA 4 s"
    )
    assert len(job_tables(running)) == 1
    done = running.model_copy(update={"status": "succeeded", "version": V1, "report": REPORT})
    assert describe_progress(done).endswith(f"3 s · version {V1}")  # no ETA once finished
    lines = text(*job_tables(done))
    assert ["model", "shapes"] in [cells(line) for line in lines]
    assert rows_of(lines, "accuracy") == [["accuracy", "0.900"]]
    listed = text(jobs_table([done]))
    assert rows_of(listed, "j1") == [
        ["j1", "shapes", "succeeded", "digits_cnn", "0123456789abcdef", "epoch 1/2", V1, "1970-01-01 00:00:00Z"]
    ]


def test_versions_table_shows_state_share_and_held_out_scores() -> None:
    common = {"name": "shapes", "base_model": "digits_cnn", "dataset": "0123456789abcdef", "categories": ["a", "b"]}
    found = [
        ModelVersion(version=V1, created=0.0, report=REPORT, state="stable", percent=80, **common),
        ModelVersion(version=V2, created=60.0, report=REPORT, state="canary", percent=20, job="j2", **common),
    ]
    rows = [cells(line) for line in text(versions_table(found)) if V1 in line or V2 in line]
    assert rows == [
        [V1, "stable", "80%", "0.900", "0.895", "digits_cnn", "0123456789abcdef", "1970-01-01 00:00:00Z", ""],
        [V2, "canary", "20%", "0.900", "0.895", "digits_cnn", "0123456789abcdef", "1970-01-01 00:01:00Z", "j2"],
    ]


def test_rollout_table_gives_each_version_its_share() -> None:
    canary = text(rollout_table(Rollout(name="shapes", stable=V1, canary=V2, percent=20, history=["aaaaaaaaaaaa"])))
    assert rows_of(canary, "stable") == [["stable", f"{V1} (80%)"]]
    assert rows_of(canary, "canary") == [["canary", f"{V2} (20%)"]]
    assert rows_of(canary, "history") == [["history", "aaaaaaaaaaaa"]]
    alone = text(rollout_table(Rollout(name="shapes", stable=V1)))
    assert rows_of(alone, "stable") == [["stable", f"{V1} (100%)"]]
    assert rows_of(alone, "canary") == [["canary", "none"]]


def test_dataset_tables_list_images_per_class_and_each_refused_file() -> None:
    dataset = Dataset(
        id="0123456789abcdef",
        classes={"b": 5, "a": 7},
        images=12,
        rejected=[RejectedFile(file="a/broken.png", error="cannot identify image file")],
        created=0.0,
    )
    lines = text(*dataset_tables(dataset))
    assert "data set 0123456789abcdef: 12 images in 2 classes" in lines[0]
    assert [row for row in (cells(line) for line in lines) if row[0] in ("a", "b")] == [["a", "7"], ["b", "5"]]
    assert rows_of(lines, "a/broken.png") == [["a/broken.png", "cannot identify image file"]]


@pytest.fixture
def nowhere() -> str:
    """A URL where nothing listens: a command line that reached it would exit 1, not 2."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (
            [
                "train",
                "--name",
                "shapes",
                "--base-model",
                "digits_cnn",
                "--dataset",
                "0123456789abcdef",
                "--epochs",
                "0",
            ],
            "epochs",
        ),
        (["train", "--name", "Bad Name!", "--base-model", "digits_cnn", "--dataset", "0123456789abcdef"], "name"),
        (["train", "--name", "shapes", "--base-model", "digits_cnn", "--dataset", "nope"], "dataset"),
        (["train", "--name", "shapes", "--dataset", "0123456789abcdef"], "--base-model"),
        (["rollout", "shapes", V1], "--percent"),
        (["rollout", "shapes", V1, "--percent", "0"], "--percent"),
        (["datasets", "upload", "{notes}"], "neither a folder"),
        (["datasets", "show"], "ID"),
    ],
)
def test_command_lines_are_refused_with_exit_2_before_any_request(
    argv: list[str], says: str, nowhere: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not an archive")
    assert main(["--url", nowhere, *(arg.format(notes=notes) for arg in argv)]) == 2
    err = capsys.readouterr().err
    assert says in err
    assert "Traceback" not in err


def test_predict_asks_the_one_version_named_by_model_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    paths: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.path)
        if request.method == "GET":
            return httpx.Response(200, json={"name": "shapes", "task": "classification"})
        prediction = {"labels": [{"label": "star", "index": 2, "score": 0.9}]}
        return httpx.Response(200, json={"model": "shapes", "model_version": V2, "predictions": [prediction]})

    transport = httpx.MockTransport(answer)
    monkeypatch.setattr(cli.Settings, "client", lambda s: VisionClient(s.url, transport=transport))
    image = tmp_path / "star.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n")
    assert main(["predict", str(image), "-m", "shapes", "--model-version", V2, "--json"]) == 0
    assert paths == ["/v1/models/shapes", f"/v1/models/shapes/versions/{V2}:predict"]
    assert '"star"' in capsys.readouterr().out
