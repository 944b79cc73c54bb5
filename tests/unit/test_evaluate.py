"""models.evaluate: bundled held-out sets, labelled folders, every task's metrics, table and JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from models import evaluate
from models.registry import get_spec


def test_classifier_report_has_accuracy_macro_scores_and_confusion(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report.json"
    assert evaluate.main(["digits_cnn", "--limit", "120", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    found = report["metrics"]
    assert report["samples"] == 120
    assert found["accuracy"] >= 0.97
    assert set(found) >= {"macro_precision", "macro_recall", "macro_f1", "confusion", "labels"}
    assert sum(map(sum, found["confusion"])) == 120
    table = capsys.readouterr().out
    assert "accuracy" in table
    assert "confusion (rows: truth" in table


def test_folder_evaluation_agrees_with_the_bundled_set_it_was_exported_from(tmp_path: Path) -> None:
    spec = get_spec("digits_cnn")
    data = evaluate.bundled_dataset("digits_cnn", spec, limit=60)
    evaluate.export_dataset(data, spec, tmp_path / "digits")
    assert sorted(p.name for p in (tmp_path / "digits").iterdir()) == [str(d) for d in range(10)]
    again = evaluate.folder_dataset(tmp_path / "digits", spec)
    assert sorted(again.labels) == sorted(data.labels)
    predict = evaluate.local_predictor(spec, {})
    assert (
        evaluate.evaluate(again, predict, spec)["metrics"]["accuracy"]
        == evaluate.evaluate(data, predict, spec)["metrics"]["accuracy"]
    )


@pytest.mark.parametrize(
    ("model", "metric", "bar"), [("digits_detector", "map_50", 0.9), ("digits_segmenter", "mean_iou", 0.8)]
)
def test_scene_models_meet_their_bar_through_the_evaluator_and_a_folder(
    tmp_path: Path, model: str, metric: str, bar: float
) -> None:
    spec = get_spec(model)
    data = evaluate.bundled_dataset(model, spec, limit=60)
    evaluate.export_dataset(data, spec, tmp_path / model)
    params = {"score_threshold": 0.05} if metric == "map_50" else {}
    report = evaluate.evaluate(
        evaluate.folder_dataset(tmp_path / model, spec), evaluate.local_predictor(spec, params), spec
    )
    assert report["samples"] == 60
    assert report["metrics"][metric] >= bar
    assert metric.split("_")[0] in evaluate.format_table(report)


def test_video_classifier_is_evaluated_on_encoded_clips() -> None:
    spec = get_spec("moving_digits_lstm")
    data = evaluate.bundled_dataset("moving_digits_lstm", spec, limit=40)
    report = evaluate.evaluate(data, evaluate.local_predictor(spec, {}), spec)
    assert report["metrics"]["accuracy"] >= 0.9


def test_folder_with_an_unknown_label_is_refused(tmp_path: Path) -> None:
    (tmp_path / "cat").mkdir()
    with pytest.raises(SystemExit, match="not a label"):
        evaluate.folder_dataset(tmp_path, get_spec("digits_cnn"))


def test_empty_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no labelled"):
        evaluate.folder_dataset(tmp_path, get_spec("digits_cnn"))


def test_parameters_are_parsed_as_json_values() -> None:
    assert evaluate._parse_params(["top_k=3", "return_latent=true", "target=cat"]) == {
        "top_k": 3,
        "return_latent": True,
        "target": "cat",
    }
    with pytest.raises(SystemExit):
        evaluate._parse_params(["novalue"])


def test_samples_are_written_with_their_truth(tmp_path: Path) -> None:
    from models.training.samples import write_samples
    from models.video_io import decode_clip

    truth = write_samples(tmp_path)
    assert set(truth) == {p.name for p in tmp_path.iterdir()}
    assert truth["digit.png"].startswith("digit ")
    assert len(decode_clip((tmp_path / "clip.gif").read_bytes())) == 16
