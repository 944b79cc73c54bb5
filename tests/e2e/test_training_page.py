"""The playground's training page in a real browser, against the real Serve app: upload a folder,
train on it with the live curve, read the report, roll a second version out and back."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from contract.lifecycle import TrainingJob
from maas import VisionClient
from tests.e2e.conftest import Playground
from tests.lifecycle import BROKEN, CLASSES, digit_folder, needs, require_served

pytestmark = [pytest.mark.browser, pytest.mark.slow]

TRAIN_TIMEOUT_MS = 240_000  # Ray Train workers starting on a 2-core machine, then five short epochs


def open_train_page(playground: Playground) -> None:
    from playwright.sync_api import expect

    page = playground.page
    page.goto(f"{playground.url}/ui/train.html")
    expect(page.get_by_test_id("output")).to_have_attribute("data-ready", "true")
    error = page.get_by_test_id("error")
    assert not error.is_visible(), f"the page did not load: {error.inner_text()}"


def fresh_name() -> str:
    return f"page_digits_{uuid.uuid4().hex[:8]}"


@needs("datasets", "jobs")
def test_folder_is_uploaded_trained_on_with_a_live_curve_and_its_report_shown(
    playground: Playground, base_url: str, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    require_served(base_url, "datasets", "jobs")
    page = playground.page
    open_train_page(playground)
    # Defaults come from the API's own schema (TrainingJobRequest), not from the page.
    assert page.get_by_label("Epochs").get_attribute("max") == "200"

    page.get_by_test_id("folder").set_input_files(str(digit_folder(tmp_path / "digits")))
    page.get_by_role("button", name="Upload").click()
    expect(page.get_by_test_id("dataset-id")).to_be_visible()
    counts = {row["label"]: int(row["count"]) for row in playground.items("dataset-class")}
    assert counts == dict.fromkeys(CLASSES, 12)
    assert [row["file"] for row in playground.items("rejected")] == [BROKEN]
    dataset_id = page.get_by_test_id("dataset-id").get_attribute("data-id")
    assert page.get_by_label("Data set", exact=True).input_value() == dataset_id

    name = fresh_name()
    page.get_by_label("New model name").fill(name)
    page.get_by_label("Base model").select_option("digits_cnn")
    page.get_by_label("Epochs").fill("5")
    page.get_by_label("Batch size").fill("8")
    # The most points the curve showed while it was drawn live from the event stream.
    page.evaluate(
        """() => {
            const curve = document.getElementById("curve");
            window.livePoints = 0;
            new MutationObserver(() => {
                if (curve.dataset.source === "live") {
                    window.livePoints = Math.max(window.livePoints, Number(curve.dataset.points));
                }
            }).observe(curve, { attributes: true });
        }"""
    )
    page.get_by_role("button", name="Start training").click()
    output = page.get_by_test_id("output")
    expect(output).to_have_attribute("data-state", "succeeded", timeout=TRAIN_TIMEOUT_MS)
    assert page.evaluate("window.livePoints") >= 1

    job_id = output.get_attribute("data-job")
    assert job_id is not None
    with VisionClient(base_url) as client:
        job = client.job(job_id)
    assert job.report is not None
    assert job.request.name == name
    curve = page.get_by_test_id("curve")
    assert curve.get_attribute("data-source") == "report"
    assert int(curve.get_attribute("data-points") or 0) == len(job.report.curve) >= 1
    cells = playground.items("cm-cell")
    assert len(cells) == len(CLASSES) ** 2
    for cell in cells:
        i, j = job.report.labels.index(cell["true"]), job.report.labels.index(cell["predicted"])
        assert int(cell["count"]) == job.report.confusion_matrix[i][j]
    assert {row["label"] for row in playground.items("class-metrics")} == set(CLASSES)
    shown = page.get_by_test_id("report-summary").get_attribute("data-accuracy")
    assert float(shown or "nan") == pytest.approx(job.report.accuracy)


@needs("datasets", "jobs", "versions")
def test_a_second_version_is_rolled_out_at_twenty_percent_and_back_from_the_page(
    playground: Playground, base_url: str, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    require_served(base_url, "datasets", "jobs", "versions")
    name = fresh_name()
    versions: list[str] = []
    with VisionClient(base_url) as client:
        dataset = client.upload_dataset(digit_folder(tmp_path / "digits"))
        for seed in (0, 1):
            job = client.train(
                name=name, base_model="digits_cnn", dataset=dataset.id, epochs=5, batch_size=8, seed=seed
            )
            final: TrainingJob = [event.job for event in client.follow_job(job.id)][-1]
            assert final.version is not None, final.error
            versions.append(final.version)
    first, second = versions

    page = playground.page
    open_train_page(playground)
    page.get_by_label("Model", exact=True).fill(name)
    page.get_by_role("button", name="Show versions").click()
    expect(page.get_by_test_id("version")).to_have_count(2)
    assert {row["version"]: row["state"] for row in playground.items("version")} == {
        first: "stable",
        second: "inactive",
    }
    state = page.get_by_test_id("rollout-state")
    assert state.get_attribute("data-stable") == first

    page.get_by_label("Version", exact=True).select_option(second)
    page.get_by_label("Share of traffic (%)").fill("20")
    page.get_by_role("button", name="Roll out").click()
    expect(state).to_have_attribute("data-canary", second)
    assert state.get_attribute("data-percent") == "20"
    expect(page.locator(f"[data-testid=version][data-version='{second}']")).to_have_attribute("data-state", "canary")

    page.get_by_role("button", name="Roll back").click()
    expect(state).to_have_attribute("data-canary", "")
    assert state.get_attribute("data-stable") == first
