"""The `maas` command line and its drawing helpers, without a server: the clients are given an
httpx.MockTransport that answers each route in its task's shape."""

from __future__ import annotations

import base64
import functools
import io
import json
import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from maas import cli
from maas.cli import Input, Outputs, coerce, expand_inputs, main, parse_feature, parse_param, summarize
from maas.client import AsyncVisionClient, RetryPolicy, VisionClient
from maas.draw import DrawError, annotate_image, colour

SIZE = (32, 24)  # every synthetic input: width, height
BOX = [4.0, 6.0, 20.0, 18.0]


def opened(path: Path) -> Image.Image:
    """A written image, loaded and its file closed."""
    with Image.open(path) as image:
        image.load()
        return image


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def b64png(image: Image.Image) -> str:
    return base64.b64encode(png_bytes(image)).decode()


def square_mask(size: tuple[int, int], index: int, box: tuple[int, int, int, int]) -> Image.Image:
    """A class-index mask: `index` inside `box` (x1, y1, x2, y2, exclusive), background 0 elsewhere."""
    mask = np.zeros((size[1], size[0]), dtype=np.uint8)
    mask[box[1] : box[3], box[0] : box[2]] = index
    return Image.fromarray(mask, "L")


def prediction_for(task: str) -> dict[str, Any]:
    """A prediction of `task` about a SIZE image, as the API shapes it."""
    if task == "classification":
        return {"labels": [{"label": "7", "index": 7, "score": 0.9}, {"label": "1", "index": 1, "score": 0.05}]}
    if task == "detection":
        return {"detections": [{"label": "3", "index": 3, "score": 0.8, "box": BOX}]}
    if task == "segmentation":
        mask = square_mask(SIZE, 3, (8, 8, 16, 16))
        classes = [{"label": "background", "index": 0, "fraction": 0.9}, {"label": "3", "index": 3, "fraction": 0.1}]
        return {"mask": b64png(mask), "mask_format": "png", "size": list(SIZE), "classes": classes}
    if task == "denoising":
        return {"image": b64png(Image.new("L", SIZE, 200)), "size": list(SIZE)}
    raise AssertionError(task)


class FakeServer:
    """A MockTransport handler answering the API's routes for one model `task`; records requests."""

    def __init__(self, task: str = "classification") -> None:
        self.task = task
        self.requests: list[httpx.Request] = []
        self.predict_calls: list[int] = []  # images per :predict request
        self.busy_every = 0  # when set, every n-th :predict answers 503

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        body = request.content
        if path == "/v1/models":
            entry = {
                "name": "digits_cnn",
                "task": "classification",
                "weights": {"source": "bundled", "name": "digits_cnn.safetensors"},
                "model_version": "abc123",
                "batching": {"max_batch_size": 16, "batch_wait_timeout_s": 0.002},
            }
            return httpx.Response(200, json={"models": [entry]})
        if path.startswith("/v1/models/missing"):
            return error(404, "model_not_found", "model 'missing' is not served; see GET /v1/models")
        if re.fullmatch(r"/v1/models/[a-z_]+", path):
            return httpx.Response(200, json={"name": path.rsplit("/", 1)[1], "task": self.task})
        count = body.count(b'name="image"') or 1
        if path.endswith(":predict"):
            self.predict_calls.append(count)
            if self.busy_every and len(self.predict_calls) % self.busy_every == 0:
                return error(503, "overloaded", "at capacity")
            # An input holding BAD stands for an undecodable image: it fails its whole request.
            if b"BAD" in body:
                return error(400, "invalid_image", "cannot identify image file")
            envelope = {"model": "m", "model_version": "1", "weights": "random", "warning": "random weights"}
            return httpx.Response(200, json={**envelope, "predictions": [prediction_for(self.task)] * count})
        if path.endswith(":explain"):
            heat = b64png(Image.new("L", SIZE, 128))
            overlay = b64png(Image.new("RGB", (SIZE[0] * 2, SIZE[1] * 2), (255, 0, 0)))
            explanation = {"label": "7", "index": 7, "score": 0.9, "method": "grad_cam", "heatmap": heat}
            return httpx.Response(200, json={"explanations": [{**explanation, "overlay": overlay}] * count})
        if path.endswith(":generate"):
            sent = json.loads(body)
            seed = sent.get("seed", 99)
            images = [
                {"image": b64png(Image.new("L", (28, 28), i)), "label": "4", "index": 4}
                for i in range(sent["num_images"])
            ]
            return httpx.Response(
                200, json={"model": "g", "model_version": "1", "weights": "t", "seed": seed, "images": images}
            )
        if path == "/v1/images:annotate":
            responses = []
            for item in json.loads(body)["requests"]:
                features = []
                for feature in item["features"]:
                    if feature["model"] == "missing":
                        features.append({"model": "missing", "error": {"code": "model_not_found", "message": "no"}})
                    else:
                        result = prediction_for("detection") | {"echo": feature["parameters"]}
                        features.append({"model": feature["model"], "model_version": "1", "result": result})
                responses.append({"features": features})
            return httpx.Response(200, json={"responses": responses})
        return error(404, "not_found", "Not Found")


def error(status: int, code: str, message: str) -> httpx.Response:
    headers = {"Retry-After": "0"} if status in (429, 503) else {}
    return httpx.Response(status, json={"error": {"code": code, "message": message}}, headers=headers)


@pytest.fixture
def serve(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], FakeServer]:
    """Installs a FakeServer of a task behind both clients the CLI makes; retries never sleep."""
    monkeypatch.setenv("COLUMNS", "200")  # rich: tables wide enough not to fold the cells checked below

    def install(task: str = "classification") -> FakeServer:
        server = FakeServer(task)
        transport = httpx.MockTransport(server)
        policy = RetryPolicy(sleep=lambda _: None)

        def client(settings: cli.Settings) -> VisionClient:
            return VisionClient(settings.url, settings.api_key, settings.timeout, policy, transport=transport)

        monkeypatch.setattr(cli.Settings, "client", client)
        monkeypatch.setattr(cli, "AsyncVisionClient", functools.partial(AsyncVisionClient, transport=transport))
        return server

    return install


def synthetic(path: Path, value: int = 255, payload: bytes = b"") -> Path:
    """A SIZE white (or grey) PNG at `path`; `payload` appended after the image data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(Image.new("RGB", SIZE, (value,) * 3)) + payload)
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Four images (one in a subfolder, one in upper case) and two files that are not images."""
    root = tmp_path / "in"
    for name in ("b.png", "a.jpg", "sub/c.webp", "D.PNG"):
        synthetic(root / name)
    (root / "notes.txt").write_text("not an image")
    (root / "sub" / "e.gif").write_bytes(b"GIF89a")
    return root


def lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# ---- parameters ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("3", 3),
        ("-2", -2),
        ("0.5", 0.5),
        ("1e-3", 0.001),
        ("true", True),
        ("False", False),
        ("seven", "seven"),
        ("nan", "nan"),
        ("", ""),
    ],
)
def test_values_are_typed_like_json_when_coerced(text: str, value: Any) -> None:
    """int, then finite float, then true/false, else the string."""
    coerced = coerce(text)
    assert coerced == value
    assert type(coerced) is type(value)


def test_key_value_splits_at_the_first_equals_when_parsed() -> None:
    """The value may itself hold '='; the key is trimmed."""
    assert parse_param("top_k=3") == ("top_k", 3)
    assert parse_param(" target = a=b") == ("target", " a=b")
    for bad in ("top_k", "=3", " =1"):
        with pytest.raises(ValueError, match="KEY=VALUE"):
            parse_param(bad)


def test_feature_is_a_model_with_typed_parameters_when_parsed() -> None:
    """MODEL[:k=v,k=v]."""
    assert parse_feature("digits_cnn") == ("digits_cnn", {})
    assert parse_feature("digits_detector:score_threshold=0.3,max_detections=5") == (
        "digits_detector",
        {"score_threshold": 0.3, "max_detections": 5},
    )
    assert parse_feature("digits_denoiser:return_latent=true,") == ("digits_denoiser", {"return_latent": True})
    with pytest.raises(ValueError, match="MODEL"):
        parse_feature(":top_k=1")
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_feature("digits_cnn:top_k")


# ---- inputs and outputs ----------------------------------------------------------------------


def test_directories_expand_to_their_images_sorted_and_recursively_when_given(folder: Path) -> None:
    """Image extensions only (any case), sorted by relative path; files named explicitly are kept as they are."""
    extra = synthetic(folder.parent / "z.png")
    found = expand_inputs([folder, extra, folder / "b.png"])
    assert [str(i.relative) for i in found] == ["D.PNG", "a.jpg", "b.png", "sub/c.webp", "z.png"]
    assert found[-1] == Input(extra, Path("z.png"))
    video = expand_inputs([folder], cli.IMAGE_EXTENSIONS | cli.VIDEO_EXTENSIONS)
    assert "sub/e.gif" in [str(i.relative) for i in video]
    assert expand_inputs([folder / "notes.txt"])[0].path.name == "notes.txt"


def test_output_names_keep_subfolders_and_never_collide_when_stems_repeat(tmp_path: Path) -> None:
    """a.jpg and a.png both map to a.png: the second becomes a-1.png."""
    outputs = Outputs(tmp_path / "out")
    assert outputs.path(Path("a.jpg")) == tmp_path / "out" / "a.png"
    assert outputs.path(Path("a.png")) == tmp_path / "out" / "a-1.png"
    assert outputs.path(Path("sub/c.webp"), ".heatmap.png") == tmp_path / "out" / "sub" / "c.heatmap.png"
    assert (tmp_path / "out" / "sub").is_dir()


@pytest.mark.parametrize(
    ("task", "expected"),
    [
        ("classification", "7 0.900"),
        ("detection", "1 detection: 3 0.80"),
        ("segmentation", "3 10.0%"),
        ("denoising", "restored image 32x24"),
    ],
)
def test_summary_names_the_top_result_when_given_any_task(task: str, expected: str) -> None:
    """One line per prediction, the task told apart by its fields."""
    assert summarize(prediction_for(task)) == expected


# ---- argument parsing ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["predict", "{img}"],  # no --model
        ["predict", "{img}", "-m", "digits_cnn", "--param", "top_k"],
        ["predict", "{img}", "-m", "digits_cnn", "--batch", "0"],
        ["predict", "{missing}", "-m", "digits_cnn"],
        ["explain", "{img}", "-m", "digits_cnn", "--out", "{out}", "--target", "1", "--target-index", "1"],
        ["explain", "{img}", "-m", "digits_cnn"],  # no --out
        ["generate", "-m", "digits_dcgan", "--out", "{out}", "--seed", "-1"],
        ["annotate", "{img}", "--feature", ":top_k=1"],
        ["bench", "-m", "digits_cnn", "--image", "{img}", "--duration", "601"],
        ["bench", "-m", "digits_cnn", "--image", "{img}", "--concurrency", "0"],
        ["--timeout", "0", "models"],
        ["frobnicate"],
        [],
    ],
)
def test_exit_status_is_2_without_a_request_when_the_command_line_is_wrong(
    serve: Callable[[str], FakeServer], tmp_path: Path, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Usage errors never reach the server."""
    server = serve("classification")
    img = synthetic(tmp_path / "x.png")
    values = {"img": str(img), "missing": str(tmp_path / "nope.png"), "out": str(tmp_path / "out")}
    assert main([arg.format(**values) for arg in argv]) == 2
    assert server.requests == []
    assert "Traceback" not in capsys.readouterr().err


def test_url_and_key_come_from_the_environment_when_not_given(
    serve: Callable[[str], FakeServer], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """VISION_MAAS_URL and VISION_MAAS_API_KEY; --url wins over the environment."""
    server = serve("classification")
    monkeypatch.setenv("VISION_MAAS_URL", "http://maas.example:8123/")
    monkeypatch.setenv("VISION_MAAS_API_KEY", "vmk_env-key")
    assert main(["models", "--json"]) == 0
    assert str(server.requests[-1].url) == "http://maas.example:8123/v1/models"
    assert server.requests[-1].headers["authorization"] == "Bearer vmk_env-key"
    assert main(["--url", "http://other.example", "models", "--json"]) == 0
    assert server.requests[-1].url.host == "other.example"
    assert json.loads(capsys.readouterr().out.splitlines()[-1])[0]["name"] == "digits_cnn"


# ---- commands ------------------------------------------------------------------------------


def test_predict_sends_a_folder_in_batches_and_prints_json_lines_when_asked(
    serve: Callable[[str], FakeServer], folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Four images in batches of 3: two :predict requests, one JSON line per file in order, params sent."""
    server = serve("classification")
    assert main(["predict", str(folder), "-m", "digits_cnn", "--batch", "3", "-p", "top_k=2", "--json"]) == 0
    assert server.predict_calls == [3, 1]
    out = lines(capsys.readouterr().out)
    assert [Path(line["file"]).relative_to(folder).as_posix() for line in out] == [
        "D.PNG",
        "a.jpg",
        "b.png",
        "sub/c.webp",
    ]
    assert out[0]["prediction"]["labels"][0]["label"] == "7"
    single = server.requests[-1]
    assert single.url.params["top_k"] == "2"  # the last batch holds one image: raw body, query parameters


@pytest.mark.parametrize("task", ["classification", "detection", "segmentation", "denoising"])
def test_predict_writes_an_annotated_image_per_input_when_out_is_given(
    serve: Callable[[str], FakeServer], folder: Path, tmp_path: Path, task: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--out: one PNG per input at the original size, under the input's relative path; a table row each."""
    serve(task)
    out = tmp_path / "out"
    assert main(["predict", str(folder), "-m", "some_model", "--out", str(out)]) == 0
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert written == ["D.png", "a.png", "b.png", "sub/c.png"]
    image = opened(out / "b.png")
    assert image.size == SIZE
    pixels = np.asarray(image.convert("RGB"))
    white = np.full_like(pixels, 255)
    if task == "denoising":
        assert (pixels == 200).all()  # the restored image itself
    else:
        assert (pixels != white).any()
    captured = capsys.readouterr()
    assert summarize(prediction_for(task)) in captured.out
    assert str(out / "sub" / "c.png") in captured.out
    assert captured.err.count("warning: random weights") == 1


def test_predict_isolates_a_bad_image_and_exits_1_when_one_input_fails(
    serve: Callable[[str], FakeServer], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 400 for a batch is retried image by image: the good ones succeed, the bad one is reported."""
    server = serve("classification")
    files = [
        synthetic(tmp_path / "1.png"),
        synthetic(tmp_path / "2.png", payload=b"BAD"),
        synthetic(tmp_path / "3.png"),
    ]
    assert main(["predict", *map(str, files), "-m", "digits_cnn", "--json"]) == 1
    assert server.predict_calls == [3, 1, 1, 1]
    captured = capsys.readouterr()
    out = lines(captured.out)
    assert [("error" in line) for line in out] == [False, True, False]
    assert out[1]["error"] == {"status": 400, "code": "invalid_image", "message": "cannot identify image file"}
    assert "1 of 3 inputs failed" in captured.err
    assert "Traceback" not in captured.err


def test_request_errors_print_the_servers_code_and_exit_1_when_the_model_is_unknown(
    serve: Callable[[str], FakeServer], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No traceback: the code, the message and the status."""
    serve("classification")
    assert main(["predict", str(synthetic(tmp_path / "x.png")), "-m", "missing"]) == 1
    err = capsys.readouterr().err
    assert "model_not_found: model 'missing' is not served; see GET /v1/models (HTTP 404)" in err
    assert "Traceback" not in err


def test_network_errors_exit_1_with_a_message_when_nothing_listens(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A refused connection (after the client's retries) is a request error, not a crash."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port = sock.getsockname()[1]

    def instant(settings: cli.Settings) -> VisionClient:
        return VisionClient(settings.url, settings.api_key, settings.timeout, RetryPolicy(sleep=lambda _: None))

    monkeypatch.setattr(cli.Settings, "client", instant)
    assert main(["--url", f"http://127.0.0.1:{port}", "models"]) == 1
    err = capsys.readouterr().err
    assert f"request to http://127.0.0.1:{port} failed: ConnectError" in err
    assert "Traceback" not in err


def test_explain_writes_overlays_at_the_original_size_and_heatmaps_when_asked(
    serve: Callable[[str], FakeServer], folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The server's overlay, fitted to the original; --heatmap adds the greyscale map; --target goes as a field."""
    server = serve("classification")
    out = tmp_path / "maps"
    assert (
        main(
            [
                "explain",
                str(folder / "b.png"),
                str(folder / "a.jpg"),
                "-m",
                "digits_cnn",
                "--target",
                "7",
                "--heatmap",
                "-o",
                str(out),
            ]
        )
        == 0
    )
    assert sorted(p.name for p in out.iterdir()) == ["a.heatmap.png", "a.png", "b.heatmap.png", "b.png"]
    assert opened(out / "b.png").size == SIZE
    assert opened(out / "b.heatmap.png").mode == "L"
    assert b'name="target"\r\n\r\n7' in server.requests[-1].content
    assert "7 0.900 (grad_cam)" in capsys.readouterr().out


def test_generate_writes_pngs_named_by_seed_and_index_and_prints_the_seed(
    serve: Callable[[str], FakeServer], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--num 3 --seed 5: 5-0.png .. 5-2.png; the request carries num_images, seed, label and parameters."""
    server = serve("generation")
    out = tmp_path / "gen"
    assert (
        main(
            [
                "generate",
                "-m",
                "digits_dcgan",
                "--num",
                "3",
                "--seed",
                "5",
                "--label",
                "4",
                "-p",
                "t=0.5",
                "-o",
                str(out),
            ]
        )
        == 0
    )
    assert sorted(p.name for p in out.iterdir()) == ["5-0.png", "5-1.png", "5-2.png"]
    assert json.loads(server.requests[-1].content) == {
        "num_images": 3,
        "seed": 5,
        "label": "4",
        "parameters": {"t": 0.5},
    }
    assert capsys.readouterr().out.startswith("seed 5\n")
    assert main(["generate", "-m", "digits_dcgan", "-o", str(out), "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["seed"] == 99
    assert body["images"] == [{"file": str(out / "99-0.png"), "label": "4", "index": 4}]


def test_annotate_prints_each_features_result_or_error_and_exits_1_when_one_fails(
    serve: Callable[[str], FakeServer], folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Features with typed parameters go in one request per batch; a failing feature is reported in its row."""
    server = serve("detection")
    argv = ["annotate", str(folder / "b.png"), "-f", "digits_detector:score_threshold=0.3", "-f", "missing", "--json"]
    assert main(argv) == 1
    (line,) = lines(capsys.readouterr().out)
    assert line["features"][0]["result"]["echo"] == {"score_threshold": 0.3}
    assert line["features"][1]["error"]["code"] == "model_not_found"
    sent = json.loads(server.requests[-1].content)["requests"][0]
    assert [f["model"] for f in sent["features"]] == ["digits_detector", "missing"]
    assert main(["annotate", str(folder), "-f", "digits_detector", "--batch", "2"]) == 0
    assert len(server.requests) == 3  # four images, two per request
    assert capsys.readouterr().out.count("1 detection: 3 0.80") == 4


def test_models_prints_a_table_of_name_task_weights_version_and_batching(
    serve: Callable[[str], FakeServer], capsys: pytest.CaptureFixture[str]
) -> None:
    """One row per model."""
    serve("classification")
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for text in ("digits_cnn", "classification", "bundled:digits_cnn.safetensors", "abc123", "16 / 2 ms"):
        assert text in out


def test_bench_reports_throughput_percentiles_errors_and_cpu_when_run_briefly(
    serve: Callable[[str], FakeServer], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 0.3 s closed loop on the URL given: every request counted, 503s by status and not retried, CPU measured."""
    server = serve("classification")
    server.busy_every = 3
    image = synthetic(tmp_path / "x.png")
    argv = [
        "bench",
        "http://bench.example",
        "-m",
        "digits_cnn",
        "--image",
        str(image),
        "-c",
        "4",
        "-d",
        "0.3",
        "--json",
    ]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["url"] == "http://bench.example"
    assert summary["ok"] > 0
    assert summary["errors"]["503"] > 0
    assert summary["requests"] == summary["ok"] + summary["errors"]["503"]
    assert len(server.predict_calls) == summary["requests"] + 1  # plus the check request; no retries
    latency = summary["latency_ms"]
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"]
    assert summary["client_cpu_s"] > 0
    assert summary["elapsed_s"] >= 0.3
    assert {r.url.host for r in server.requests} == {"bench.example"}


def test_bench_exits_1_before_timing_when_the_check_request_fails(
    serve: Callable[[str], FakeServer], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A wrong model is found by the first request, not by a minute of errors."""
    serve("classification")
    image = synthetic(tmp_path / "x.png")
    assert main(["bench", "-m", "missing", "--image", str(image), "-d", "600"]) == 1
    assert "model_not_found" in capsys.readouterr().err


# ---- drawing -------------------------------------------------------------------------------


def white() -> Image.Image:
    return Image.new("RGB", (64, 48), (255, 255, 255))


def changed(before: Image.Image, after: Image.Image) -> np.ndarray:
    """Where two images differ, as a boolean (height, width) array."""
    difference: np.ndarray = np.asarray(before.convert("RGB")) != np.asarray(after.convert("RGB"))
    return np.asarray(difference.any(axis=2))


def test_box_is_drawn_on_its_pixels_when_a_detection_is_drawn() -> None:
    """The box's edges take its class colour; far from the box and its label nothing changes."""
    original = white()
    prediction = {"detections": [{"label": "5", "index": 5, "score": 0.75, "box": [20.0, 20.0, 50.0, 44.0]}]}
    drawn = annotate_image(original, prediction, "detection")
    assert drawn.size == original.size
    diff = changed(original, drawn)
    assert diff[20:45, 20:51].any()
    assert tuple(np.asarray(drawn)[32, 20]) == colour(5)  # the left edge, halfway down
    assert not diff[:, :15].any()  # left of the box and of its label
    assert tuple(np.asarray(original)[32, 20]) == (255, 255, 255)  # the original is left alone


def test_mask_overlay_keeps_the_original_size_and_colours_only_classes_when_segmentation() -> None:
    """Class pixels are blended 50% with their colour; background pixels are untouched; a smaller mask is stretched."""
    original = Image.new("RGB", (64, 48), (100, 100, 100))
    mask = square_mask((32, 24), 3, (8, 8, 16, 16))  # half size: (16..32, 16..32) at full size
    classes = [{"label": "background", "index": 0, "fraction": 0.9}, {"label": "3", "index": 3, "fraction": 0.1}]
    drawn = annotate_image(original, {"mask": b64png(mask), "classes": classes}, "segmentation")
    assert drawn.size == (64, 48)
    pixels = np.asarray(drawn).astype(int)
    expected = (np.array([100, 100, 100]) + np.array(colour(3))) / 2
    assert np.abs(pixels[20, 20] - expected).max() <= 1
    diff = changed(original, drawn)
    assert diff[16:32, 16:32].all()
    assert diff.sum() == 16 * 16


def test_caption_shows_the_top_label_in_a_corner_when_classification() -> None:
    """Text at the top left; the rest of the image as it was."""
    original = white()
    drawn = annotate_image(original, prediction_for("classification"), "classification")
    diff = changed(original, drawn)
    assert diff[:12, :30].any()
    assert not diff[30:, 40:].any()


def test_returned_image_is_the_result_when_denoising_or_explaining() -> None:
    """Denoising: the restored image; explanation: the server's overlay, fitted to the original."""
    restored = annotate_image(white(), prediction_for("denoising"), "denoising")
    assert restored.size == SIZE
    assert (np.asarray(restored) == 200).all()
    overlay = Image.new("RGB", (128, 96), (0, 0, 255))
    drawn = annotate_image(white(), {"overlay": b64png(overlay)}, "explanation")
    assert drawn.size == (64, 48)
    assert tuple(np.asarray(drawn)[40, 60]) == (0, 0, 255)


@pytest.mark.parametrize(
    ("prediction", "task", "message"),
    [
        ({"labels": []}, "generation_of_words", "cannot draw task"),
        ({"labels": []}, "detection", "'detections'"),
        ({"mask": "not base64!"}, "segmentation", "not a base64-encoded image"),
        ({"detections": [{"label": "1", "index": 1, "score": 0.5}]}, "detection", "malformed detection"),
    ],
)
def test_draw_error_explains_the_problem_when_the_prediction_does_not_fit(
    prediction: dict[str, Any], task: str, message: str
) -> None:
    """Unknown tasks, missing fields and bad images are DrawErrors (ValueErrors), never KeyErrors."""
    with pytest.raises(DrawError, match=message):
        annotate_image(white(), prediction, task)
