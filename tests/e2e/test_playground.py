"""The web playground in a real browser, against the real Serve app: every task end to end."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
from PIL import Image

from models.training.scenes import Scene, digit_scenes
from tests.conftest import encode
from tests.e2e.conftest import Playground

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def scenes() -> list[Scene]:
    """Held-out scenes (only held-out digits) with two to four digits each."""
    return [s for s in digit_scenes("test", 40, seed=11) if len(s.labels) >= 2][:3]


def iou(a: list[float], b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def test_photo_gets_labels_with_score_bars_when_run_on_resnet18(playground: Playground, photo_jpeg: bytes) -> None:
    playground.open("resnet18")
    playground.upload("china.jpg", "image/jpeg", photo_jpeg)
    playground.run()
    labels = playground.items("label")
    assert len(labels) == 5  # the page's default top_k
    scores = [float(item["score"]) for item in labels]
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert scores == sorted(scores, reverse=True)
    first = playground.page.get_by_test_id("label").first
    assert labels[0]["label"] in first.inner_text()
    assert f"{scores[0]:.3f}" in first.inner_text()
    width = first.locator(".bar > span").evaluate("n => parseFloat(n.style.width)")
    assert width == pytest.approx(scores[0] * 100, abs=1e-3)
    # Random weights are said out loud next to the result.
    assert "random" in playground.page.get_by_test_id("warning").inner_text()


def test_digit_top_label_is_the_true_digit_when_run_on_digits_cnn(
    playground: Playground, digit_pngs: list[tuple[bytes, int]]
) -> None:
    playground.open("digits_cnn")
    playground.fill("Top labels", "3")
    for i, (png, digit) in enumerate(digit_pngs[:3]):
        playground.upload(f"digit{i}.png", "image/png", png)
        playground.run()
        labels = playground.items("label")
        assert len(labels) == 3
        assert labels[0]["label"] == str(digit)


def test_detection_boxes_list_the_scene_digits_where_they_are(playground: Playground, scenes: list[Scene]) -> None:
    scene = scenes[0]
    big = scene.image.resize((scene.image.width * 3, scene.image.height * 3), Image.Resampling.BICUBIC)
    playground.open("digits_detector")
    playground.upload("scene.png", "image/png", encode(big))
    playground.run()
    boxes = playground.items("box")
    assert sorted(b["label"] for b in boxes) == sorted(str(label) for label in scene.labels)
    for truth, label in zip(scene.boxes * 3, scene.labels, strict=True):
        drawn = [[float(v) for v in b["box"].split(",")] for b in boxes if b["label"] == str(label)]
        assert max(iou(box, truth) for box in drawn) >= 0.5
    canvas = playground.page.get_by_test_id("detection-canvas")
    assert canvas.is_visible()
    assert canvas.evaluate("c => [c.width, c.height]") == [big.width, big.height]
    playground.docs_screenshot()


def test_segmentation_mask_is_overlaid_with_a_class_legend(playground: Playground, scenes: list[Scene]) -> None:
    scene = scenes[1]
    playground.open("digits_segmenter")
    playground.upload("scene.png", "image/png", encode(scene.image))
    playground.run()
    canvas = playground.page.get_by_test_id("segmentation-canvas")
    assert canvas.is_visible()
    assert int(canvas.get_attribute("data-mask-pixels") or 0) > 0
    legend = {c["label"] for c in playground.items("class")}
    assert "background" in legend
    assert {str(label) for label in scene.labels} <= legend
    # The opacity slider redraws the same canvas.
    playground.page.get_by_label("Mask opacity").fill("1")
    assert canvas.is_visible()


def test_generate_shows_four_images_and_their_seed(playground: Playground) -> None:
    playground.open("digits_dcgan")
    playground.fill("Images", "4")
    playground.fill("Seed (empty: random)", "1234")
    playground.page.get_by_label("Label", exact=True).select_option("7")
    playground.run()
    images = playground.page.get_by_test_id("generated")
    assert images.count() == 4
    assert images.evaluate_all("imgs => imgs.every(i => i.complete && i.naturalWidth > 0)")
    assert [i["label"] for i in playground.items("generated")] == ["7"] * 4
    assert playground.items("result-seed") == [{"testid": "result-seed", "seed": "1234"}]


def test_denoised_image_is_shown_beside_the_input(
    playground: Playground, held_out_digits: tuple[np.ndarray, np.ndarray]
) -> None:
    from models.training.data import render_digit

    clean = np.asarray(render_digit(held_out_digits[0][0], size=56), dtype=np.float32) / 255.0
    noisy = np.clip(clean + np.random.default_rng(0).normal(0, 0.3, clean.shape), 0, 1)
    playground.open("digits_denoiser")
    playground.upload("noisy.png", "image/png", encode(Image.fromarray((noisy * 255).astype(np.uint8), "L")))
    playground.page.get_by_label("Return the latent code").check()
    playground.run()
    sizes = playground.page.locator("img[data-testid=input-image], img[data-testid=denoised]").evaluate_all(
        "imgs => imgs.map(i => [i.naturalWidth, i.naturalHeight])"
    )
    assert sizes == [[56, 56], [56, 56]]
    assert playground.page.get_by_test_id("latent").inner_text().startswith("Latent code")


def test_explain_toggle_shows_the_heatmap_overlay(playground: Playground, digit_pngs: list[tuple[bytes, int]]) -> None:
    png, digit = digit_pngs[1]
    playground.open("digits_cnn")
    playground.upload("digit.png", "image/png", png)
    playground.page.get_by_label("Explain (heatmap of the top label)").check()
    playground.run()
    assert playground.items("label")[0]["label"] == str(digit)
    overlay = playground.page.get_by_test_id("explanation")
    assert overlay.evaluate("i => i.complete && i.naturalWidth") == Image.open(io.BytesIO(png)).width
    assert f"“{digit}”" in playground.page.locator("figcaption").first.inner_text()


def test_video_clip_gets_labels_when_run_on_the_video_classifier(playground: Playground, base_url: str) -> None:
    from models.training.moving_digits import clip_frames, make_clips
    from models.video_io import encode_clip

    clips, _, _ = make_clips("test", 1, seed=5)
    gif = encode_clip(clip_frames(clips[0]), "gif")
    playground.open("moving_digits_lstm")
    playground.upload("clip.gif", "image/gif", gif)
    playground.run()
    shown = [item["label"] for item in playground.items("label")]
    direct = httpx.post(
        f"{base_url}/v1/models/moving_digits_lstm:predict", files={"video": ("clip.gif", gif, "image/gif")}
    )
    assert direct.status_code == 200, direct.text
    assert shown == [item["label"] for item in direct.json()["predictions"][0]["labels"]]


def test_error_box_shows_the_servers_code_and_message_when_a_text_file_is_run(
    playground: Playground, base_url: str
) -> None:
    text = b"these are notes, not a picture\n"
    direct = httpx.post(f"{base_url}/v1/models/digits_cnn:predict", files={"image": ("notes.txt", text, "text/plain")})
    assert direct.status_code in (400, 415)
    error = direct.json()["error"]
    playground.open("digits_cnn")
    playground.upload("notes.txt", "text/plain", text)
    playground.run(expect_state="error")
    box = playground.page.get_by_role("alert")
    assert box.is_visible()
    assert playground.page.get_by_test_id("error-code").inner_text() == f"{direct.status_code} {error['code']}"
    assert playground.page.get_by_test_id("error-message").inner_text() == error["message"]
    assert playground.items("label") == []
