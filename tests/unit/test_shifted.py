"""The shifted suites: every bundled model meets its floor on every shift, or its card names the shift with the figure."""

from __future__ import annotations

from typing import Any

import pytest

from models import docs, shifted
from models.registry import get_spec

# How far a reduced suite's figure may lie from the full suite's (a fifth to a third as many
# pictures, from the same seeded streams) on a shift the card names: a rate, or dB of PSNR gain.
RATE_TOLERANCE = 0.12
DB_TOLERANCE = 1.5
# How far under the baseline a not-covered shift may fall (the baseline's own sampling error).
NO_WORSE_RATE = 0.02
NO_WORSE_DB = 0.3


@pytest.fixture(scope="module")
def results() -> dict[str, Any]:
    return shifted.load()


def _tolerance(metric: str, rate: float, db: float) -> float:
    return db if metric == "psnr_gain_db" else rate


def test_every_bundled_model_has_a_table_measured_on_its_served_weights(results: dict[str, Any]) -> None:
    assert list(results["models"]) == list(shifted.SUITES)
    for model, entry in results["models"].items():
        assert entry["weights_sha256"] == get_spec(model).weights.sha256, f"{model}: measured other weights"
        assert entry["floors"] == shifted.FLOORS[model]
        assert len(entry["shifts"]) >= 3, model
        for row in entry["shifts"]:
            assert set(shifted.FLOORS[model]) <= set(row), (model, row["shift"])


def test_the_models_page_names_every_shift_a_model_does_not_cover_with_its_figure(results: dict[str, Any]) -> None:
    page = docs.PAGE.read_text()
    assert docs.shifted_block(docs.WEIGHTS) in page, "docs/models.md is stale: run python -m models.docs"
    lines = page.splitlines()
    named = 0
    for model, entry in results["models"].items():
        start = lines.index(next(line for line in lines if line.startswith(f"**`{model}`**")))
        table = lines[start : start + 5 + len(entry["shifts"])]  # title, floors, blank, header, rule, rows
        for row in entry["shifts"]:
            line = next(line for line in table if line.startswith(f"| `{row['shift']}` |"))
            missing = shifted.below_floor(model, row)
            if missing:
                named += 1
                assert "**no**" in line
                for metric in missing:
                    assert f"{docs.METRICS[metric]} {docs._figure(metric, row[metric])}" in line
            else:
                assert line.endswith(" yes |"), line
    assert named == sum(len(shifted.below_floor(m, r)) > 0 for m, e in results["models"].items() for r in e["shifts"])


def test_shifts_a_model_does_not_cover_are_answered_no_worse_than_before(results: dict[str, Any]) -> None:
    before = results["baseline"]["models"]
    for model, entry in results["models"].items():
        old = {row["shift"]: row for row in before[model]["shifts"]}
        for row in entry["shifts"]:
            for metric in shifted.below_floor(model, row):
                was = old[row["shift"]][metric]
                assert row[metric] >= was - _tolerance(metric, NO_WORSE_RATE, NO_WORSE_DB), (
                    model,
                    row["shift"],
                    metric,
                )


def test_recall_counts_only_right_labels_at_the_default_threshold() -> None:
    import numpy as np

    from models.metrics import Detections

    truth = [Detections(np.array([[0, 0, 10, 10], [20, 20, 30, 30]], dtype=np.float32), np.array([3, 4]))]
    found = [
        {
            "detections": [
                {"box": [0, 0, 10, 10], "index": 3, "score": 0.9},  # found
                {"box": [20, 20, 30, 30], "index": 5, "score": 0.9},  # wrong digit
                {"box": [20, 20, 30, 30], "index": 4, "score": 0.4},  # under the default threshold
            ]
        }
    ]
    assert shifted.detection_recall(found, truth) == 0.5


@pytest.mark.slow
@pytest.mark.parametrize("model", list(shifted.SUITES))
def test_a_reduced_suite_measured_again_agrees_with_the_recorded_figures(model: str, results: dict[str, Any]) -> None:
    # The recorded figures meet the floors or are named on the card (the tests above); this
    # checks they are the model's: measured again on fewer pictures, each lies within sampling
    # tolerance of its record, on either side of the floor.
    measured = shifted.measure(model, reduced=True)
    recorded = {row["shift"]: row for row in results["models"][model]["shifts"]}
    assert list(recorded) == [row["shift"] for row in measured["shifts"]]
    for row in measured["shifts"]:
        full = recorded[row["shift"]]
        for metric in shifted.FLOORS[model]:
            tolerance = _tolerance(metric, RATE_TOLERANCE, DB_TOLERANCE)
            assert abs(row[metric] - full[metric]) <= tolerance, (
                model,
                row["shift"],
                metric,
                row[metric],
                full[metric],
            )


def test_the_command_line_names_the_suites_when_asked_for_one_it_has_not() -> None:
    from models.evaluate import main

    with pytest.raises(SystemExit, match=r"no shifted suite for resnet18 .*digits_detector"):
        main(["--shifted", "resnet18"])
    with pytest.raises(SystemExit, match="name one model"):
        main([])
