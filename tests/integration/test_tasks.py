"""Every task's routes through HTTP on the real Serve app: detection, segmentation, generation,
denoising, explanation maps and annotate (video has its own module)."""

from __future__ import annotations

import base64
import io
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from models.training.scenes import Scene, digit_scenes
from tests.conftest import encode


def png_of(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    assert image.format == "PNG"
    image.load()
    return image


@pytest.fixture(scope="module")
def scenes() -> list[Scene]:
    """Held-out scenes (only held-out digits): two to four digits each."""
    return [s for s in digit_scenes("test", 40, seed=11) if len(s.labels) >= 2][:6]


def post_image(client: httpx.Client, route: str, png: bytes, **params: Any) -> httpx.Response:
    return client.post(route, content=png, headers={"Content-Type": "image/png"}, params=params)


def error_code(response: httpx.Response) -> str:
    code: str = response.json()["error"]["code"]
    return code


# ---- detection ------------------------------------------------------------------------


def test_detector_finds_the_scene_digits_in_original_pixels_when_scene_posted(
    client: httpx.Client, scenes: list[Scene]
) -> None:
    found = total = 0
    for scene in scenes[:4]:
        big = scene.image.resize((scene.image.width * 3, scene.image.height * 3), Image.Resampling.BICUBIC)
        response = post_image(client, "/v1/models/digits_detector:predict", encode(big))
        assert response.status_code == 200, response.text
        detections = response.json()["predictions"][0]["detections"]
        assert all(set(d) == {"label", "index", "score", "box"} for d in detections)
        for truth, label in zip(scene.boxes * 3, scene.labels, strict=True):
            total += 1
            # Boxes come back in the posted picture's pixels: 3x the scene's.
            found += any(d["label"] == str(label) and _iou(d["box"], truth) >= 0.5 for d in detections)
    assert found >= 0.85 * total, (found, total)


def _iou(a: list[float], b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def test_detector_honours_max_detections_and_score_threshold(client: httpx.Client, scenes: list[Scene]) -> None:
    png = encode(scenes[1].image)
    one = post_image(client, "/v1/models/digits_detector:predict", png, max_detections=1).json()
    assert len(one["predictions"][0]["detections"]) == 1
    low = post_image(client, "/v1/models/digits_detector:predict", png, score_threshold=0.05).json()
    high = post_image(client, "/v1/models/digits_detector:predict", png, score_threshold=0.99).json()
    assert len(high["predictions"][0]["detections"]) <= len(low["predictions"][0]["detections"])
    assert all(d["score"] >= 0.99 for d in high["predictions"][0]["detections"])


@pytest.mark.parametrize(
    "params", [{"score_threshold": 1.5}, {"max_detections": 0}, {"max_detections": "many"}, {"top_k": 3}]
)
def test_detector_answers_422_when_parameters_are_invalid(
    client: httpx.Client, scenes: list[Scene], params: dict[str, Any]
) -> None:
    response = post_image(client, "/v1/models/digits_detector:predict", encode(scenes[0].image), **params)
    assert response.status_code == 422, response.text
    assert error_code(response) == "invalid_parameters"


# ---- segmentation ---------------------------------------------------------------------


def test_segmenter_returns_a_class_mask_at_the_original_size(client: httpx.Client, scenes: list[Scene]) -> None:
    scene = scenes[2]
    big = scene.image.resize((200, 150), Image.Resampling.BILINEAR)
    response = post_image(client, "/v1/models/digits_segmenter:predict", encode(big))
    assert response.status_code == 200, response.text
    prediction = response.json()["predictions"][0]
    mask = png_of(prediction["mask"])
    assert mask.size == (200, 150)
    assert mask.mode == "L"
    assert prediction["size"] == [200, 150]
    fractions = {c["label"]: c["fraction"] for c in prediction["classes"]}
    assert abs(sum(fractions.values()) - 1.0) < 1e-3
    assert fractions["background"] > 0.5
    expected = {str(label) for label in scene.labels}
    assert expected <= set(fractions)
    values = set(np.unique(np.asarray(mask)).tolist())
    assert values <= set(range(11))


def test_segmenter_answers_422_when_min_fraction_is_out_of_range(client: httpx.Client, scenes: list[Scene]) -> None:
    response = post_image(client, "/v1/models/digits_segmenter:predict", encode(scenes[0].image), min_fraction=2)
    assert response.status_code == 422


# ---- generation -----------------------------------------------------------------------


def generate(client: httpx.Client, body: dict[str, Any], **headers: str) -> httpx.Response:
    return client.post("/v1/models/digits_dcgan:generate", json=body, headers=headers)


def test_generate_gives_the_same_images_for_the_same_seed(client: httpx.Client) -> None:
    first = generate(client, {"num_images": 3, "seed": 1234, "label": 7})
    again = generate(client, {"num_images": 3, "seed": 1234, "label": "7"})
    other = generate(client, {"num_images": 3, "seed": 99, "label": 7})
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["seed"] == 1234
    assert [i["label"] for i in body["images"]] == ["7", "7", "7"]
    assert [i["image"] for i in body["images"]] == [i["image"] for i in again.json()["images"]]
    assert [i["image"] for i in body["images"]] != [i["image"] for i in other.json()["images"]]
    assert len({i["image"] for i in body["images"]}) == 3
    assert png_of(body["images"][0]["image"]).mode == "L"


def test_generated_digits_are_read_back_by_the_classifier(client: httpx.Client) -> None:
    images = generate(client, {"num_images": 10, "seed": 5, "label": 3}).json()["images"]
    files = [("image", (f"{i}.png", base64.b64decode(img["image"]), "image/png")) for i, img in enumerate(images)]
    response = client.post("/v1/models/digits_cnn:predict", files=files)
    top = [p["labels"][0]["label"] for p in response.json()["predictions"]]
    assert top.count("3") >= 8


def test_generate_returns_a_png_when_accept_asks_for_one(client: httpx.Client) -> None:
    response = generate(client, {"seed": 8, "label": 2}, Accept="image/png")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.headers["x-seed"] == "8"
    assert response.headers["x-label"] == "2"
    assert Image.open(io.BytesIO(response.content)).format == "PNG"
    json_body = generate(client, {"seed": 8, "label": 2}).json()
    assert base64.b64decode(json_body["images"][0]["image"]) == response.content


def test_generate_picks_and_returns_a_seed_when_none_given(client: httpx.Client) -> None:
    body = generate(client, {"num_images": 2}).json()
    replay = generate(client, {"num_images": 2, "seed": body["seed"]}).json()
    assert [i["image"] for i in replay["images"]] == [i["image"] for i in body["images"]]
    assert [i["label"] for i in replay["images"]] == [i["label"] for i in body["images"]]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"num_images": 0}, 422),
        ({"num_images": 65}, 422),
        ({"seed": -1}, 422),
        ({"label": 12}, 422),
        ({"label": "seven"}, 422),
        ({"surprise": 1}, 422),
    ],
)
def test_generate_refuses_invalid_requests(client: httpx.Client, body: dict[str, Any], status: int) -> None:
    response = generate(client, body)
    assert response.status_code == status, response.text
    assert error_code(response) == "invalid_parameters"


def test_generate_answers_406_when_png_asked_for_several_images(client: httpx.Client) -> None:
    response = generate(client, {"num_images": 2}, Accept="image/png")
    assert response.status_code == 406
    assert error_code(response) == "not_acceptable"


def test_routes_answer_404_when_the_model_has_another_task(
    client: httpx.Client, digit_pngs: list[tuple[bytes, int]]
) -> None:
    png = digit_pngs[0][0]
    assert generate(client, {}).status_code == 200
    wrong = [
        client.post("/v1/models/digits_cnn:generate", json={}),
        post_image(client, "/v1/models/digits_dcgan:predict", png),
        post_image(client, "/v1/models/digits_detector:explain", png),
        post_image(client, "/v1/models/digits_dcgan:explain", png),
    ]
    for response in wrong:
        assert response.status_code == 404, response.text
        assert error_code(response) == "route_not_supported"


def test_generate_answers_400_when_the_body_is_not_json(client: httpx.Client) -> None:
    response = client.post(
        "/v1/models/digits_dcgan:generate", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert response.status_code in (400, 422)


# ---- denoising ------------------------------------------------------------------------


def _noisy_digit(digit: np.ndarray, seed: int) -> Image.Image:
    from models.training.data import render_digit

    clean = np.asarray(render_digit(digit, size=56), dtype=np.float32) / 255.0
    noisy = np.clip(clean + np.random.default_rng(seed).normal(0, 0.3, clean.shape), 0, 1)
    return Image.fromarray((noisy * 255).astype(np.uint8), "L")


def test_denoiser_returns_the_restored_image_at_the_original_size(
    client: httpx.Client, held_out_digits: tuple[np.ndarray, np.ndarray]
) -> None:
    noisy = _noisy_digit(held_out_digits[0][0], seed=0)
    response = post_image(client, "/v1/models/digits_denoiser:predict", encode(noisy))
    assert response.status_code == 200, response.text
    prediction = response.json()["predictions"][0]
    restored = png_of(prediction["image"])
    assert restored.size == noisy.size == tuple(prediction["size"])
    assert prediction.get("latent") is None
    with_code = post_image(client, "/v1/models/digits_denoiser:predict", encode(noisy), return_latent="true").json()
    latent = with_code["predictions"][0]["latent"]
    assert len(latent) >= 4
    assert all(isinstance(v, float) for v in latent)


def test_denoiser_answers_422_when_return_latent_is_not_a_boolean(
    client: httpx.Client, digit_pngs: list[tuple[bytes, int]]
) -> None:
    response = post_image(client, "/v1/models/digits_denoiser:predict", digit_pngs[0][0], return_latent="maybe")
    assert response.status_code == 422


# ---- explanation maps -----------------------------------------------------------------


def test_explain_returns_heatmap_and_overlay_at_the_original_size(
    client: httpx.Client, digit_pngs: list[tuple[bytes, int]]
) -> None:
    png, label = digit_pngs[1]
    response = post_image(client, "/v1/models/digits_cnn:explain", png)
    assert response.status_code == 200, response.text
    explanation = response.json()["explanations"][0]
    assert explanation["label"] == str(label)
    assert explanation["method"] == "grad_cam"
    heatmap, overlay = png_of(explanation["heatmap"]), png_of(explanation["overlay"])
    original = Image.open(io.BytesIO(png))
    assert heatmap.size == overlay.size == original.size
    assert overlay.mode == "RGB"
    assert np.asarray(heatmap).max() > 0


def test_explain_explains_the_requested_target(client: httpx.Client, digit_pngs: list[tuple[bytes, int]]) -> None:
    png, label = digit_pngs[2]
    other = str((label + 1) % 10)
    by_label = post_image(client, "/v1/models/digits_cnn:explain", png, target=other).json()["explanations"][0]
    by_index = post_image(client, "/v1/models/digits_cnn:explain", png, target_index=int(other)).json()
    assert by_label["label"] == other
    assert by_index["explanations"][0]["label"] == other
    assert by_label["score"] < 0.5


@pytest.mark.parametrize("params", [{"target": "eleven"}, {"target_index": 10}, {"alpha": 3}])
def test_explain_answers_422_when_the_target_or_alpha_is_invalid(
    client: httpx.Client, digit_pngs: list[tuple[bytes, int]], params: dict[str, Any]
) -> None:
    response = post_image(client, "/v1/models/digits_cnn:explain", digit_pngs[0][0], **params)
    assert response.status_code == 422, response.text


def test_explain_works_for_a_torchvision_classifier(client: httpx.Client, photo_jpeg: bytes) -> None:
    response = client.post("/v1/models/resnet18:explain", content=photo_jpeg, headers={"Content-Type": "image/jpeg"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["weights"] == "random"
    assert png_of(body["explanations"][0]["overlay"]).size == Image.open(io.BytesIO(photo_jpeg)).size


# ---- annotate -------------------------------------------------------------------------


def annotate_body(images: list[bytes], features: list[dict[str, Any]]) -> dict[str, Any]:
    return {"requests": [{"image": {"b64": base64.b64encode(png).decode()}, "features": features} for png in images]}


def test_annotate_runs_every_feature_on_every_image(client: httpx.Client, scenes: list[Scene]) -> None:
    features = [
        {"model": "digits_detector", "parameters": {"score_threshold": 0.3}},
        {"model": "digits_segmenter"},
        {"model": "digits_denoiser", "parameters": {"return_latent": True}},
        {"model": "digits_cnn", "parameters": {"top_k": 2}},
    ]
    response = client.post("/v1/images:annotate", json=annotate_body([encode(s.image) for s in scenes[:3]], features))
    assert response.status_code == 200, response.text
    responses = response.json()["responses"]
    assert len(responses) == 3
    found = total = 0
    for scene, item in zip(scenes, responses, strict=False):
        assert [f["model"] for f in item["features"]] == [f["model"] for f in features]
        assert all("error" not in f or f["error"] is None for f in item["features"]), item
        detected = [d["label"] for d in item["features"][0]["result"]["detections"] if d["score"] >= 0.5]
        for label in map(str, scene.labels):
            total += 1
            if label in detected:
                detected.remove(label)
                found += 1
        assert png_of(item["features"][1]["result"]["mask"]).size == scene.image.size
        assert len(item["features"][2]["result"]["latent"]) >= 4
        assert len(item["features"][3]["result"]["labels"]) == 2
    assert found >= 0.85 * total, (found, total)


def test_annotate_reports_a_failing_feature_in_its_own_slot(client: httpx.Client, scenes: list[Scene]) -> None:
    features = [
        {"model": "digits_detector"},
        {"model": "no_such_model"},
        {"model": "digits_dcgan"},
        {"model": "digits_segmenter", "parameters": {"min_fraction": 7}},
        {"model": "digits_cnn"},
    ]
    body = annotate_body([encode(scenes[0].image), b"not an image"], features)
    response = client.post("/v1/images:annotate", json=body)
    assert response.status_code == 200, response.text
    good, bad = response.json()["responses"]
    codes = [f["error"]["code"] if f.get("error") else "ok" for f in good["features"]]
    assert codes == ["ok", "model_not_found", "route_not_supported", "invalid_parameters", "ok"]
    assert bad["features"] == []
    assert bad["error"]["code"] in {"invalid_image", "unsupported_media_type"}


def test_annotate_answers_413_when_too_many_images(client: httpx.Client, scenes: list[Scene]) -> None:
    body = annotate_body([encode(scenes[0].image)] * 17, [{"model": "digits_cnn"}])
    response = client.post("/v1/images:annotate", json=body)
    assert response.status_code == 413


@pytest.mark.parametrize(
    "body",
    [{}, {"requests": []}, {"requests": [{"image": {"b64": "AAAA"}, "features": []}]}, {"requests": "x"}],
)
def test_annotate_answers_422_when_the_body_is_malformed(client: httpx.Client, body: dict[str, Any]) -> None:
    response = client.post("/v1/images:annotate", json=body)
    assert response.status_code == 422, response.text


# ---- Open Inference Protocol v2, every task --------------------------------------------


def v2_infer(client: httpx.Client, model: str, inputs: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    response = client.post(f"/v2/models/{model}/infer", json={"inputs": inputs})
    assert response.status_code == 200, response.text
    return {o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in response.json()["outputs"]}


def image_input(pngs: list[bytes]) -> dict[str, Any]:
    return {
        "name": "image",
        "datatype": "BYTES",
        "shape": [len(pngs)],
        "data": [base64.b64encode(p).decode() for p in pngs],
    }


@pytest.mark.parametrize("model", ["digits_detector", "digits_segmenter", "digits_denoiser"])
def test_v2_infer_answers_the_outputs_its_metadata_lists(client: httpx.Client, scenes: list[Scene], model: str) -> None:
    metadata = client.get(f"/v2/models/{model}").json()
    outputs = v2_infer(client, model, [image_input([encode(s.image) for s in scenes[:2]])])
    assert set(outputs) == {o["name"] for o in metadata["outputs"]}
    for spec in metadata["outputs"]:
        shape = outputs[spec["name"]].shape
        assert shape[0] == 2
        assert all(want in (-1, got) for want, got in zip(spec["shape"], shape, strict=True)), (spec, shape)


def test_v2_generates_one_image_per_seed(client: httpx.Client) -> None:
    metadata = client.get("/v2/models/digits_dcgan").json()
    assert [i["name"] for i in metadata["inputs"]][:2] == ["seed", "label"]
    inputs = [
        {"name": "seed", "datatype": "INT64", "shape": [3], "data": [1, 2, 1]},
        {"name": "label", "datatype": "INT64", "shape": [3], "data": [4, 4, 4]},
    ]
    outputs = v2_infer(client, "digits_dcgan", inputs)
    images = outputs["images"]
    assert images.shape[0] == 3
    assert (images[0] == images[2]).all()
    assert not (images[0] == images[1]).all()
    assert outputs["labels"].tolist() == [4, 4, 4]


def test_v2_infer_answers_400_when_the_input_is_not_the_tasks(client: httpx.Client, scenes: list[Scene]) -> None:
    response = client.post("/v2/models/digits_dcgan/infer", json={"inputs": [image_input([encode(scenes[0].image)])]})
    assert response.status_code == 400
    assert "seed" in response.json()["error"]


def test_photo_denoiser_restores_a_photo_at_its_original_size(client: httpx.Client, photo_jpeg: bytes) -> None:
    response = client.post(
        "/v1/models/photo_denoiser:predict", content=photo_jpeg, headers={"Content-Type": "image/jpeg"}
    )
    assert response.status_code == 200, response.text
    restored = png_of(response.json()["predictions"][0]["image"])
    assert restored.size == Image.open(io.BytesIO(photo_jpeg)).size
    assert restored.mode == "RGB"
