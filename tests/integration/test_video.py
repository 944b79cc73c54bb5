"""Video classification through HTTP: clips as MP4, WebM and GIF, as ordered frames, and their limits."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest

from models.training.moving_digits import DIRECTIONS, clip_frames, make_clips
from models.video_io import encode_clip
from tests.conftest import encode

ROUTE = "/v1/models/moving_digits_lstm:predict"


@pytest.fixture(scope="module")
def clips() -> tuple[np.ndarray, np.ndarray]:
    """Held-out clips (only held-out digits): (N, T, H, W) uint8 and their direction indices."""
    frames, directions, _ = make_clips("test", 16, seed=5)
    return frames, directions


def top(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [p["labels"][0]["label"] for p in response.json()["predictions"]]


@pytest.mark.parametrize(("fmt", "media"), [("mp4", "video/mp4"), ("webm", "video/webm"), ("gif", "image/gif")])
def test_clip_direction_is_classified_when_a_video_file_is_posted(
    client: httpx.Client, clips: tuple[np.ndarray, np.ndarray], fmt: str, media: str
) -> None:
    frames, directions = clips
    right = 0
    for clip, direction in zip(frames[:6], directions[:6], strict=True):
        response = client.post(ROUTE, content=encode_clip(clip_frames(clip), fmt), headers={"Content-Type": media})
        right += top(response) == [DIRECTIONS[int(direction)]]
    assert right >= 5


def test_several_clips_in_one_multipart_request_answer_in_order(
    client: httpx.Client, clips: tuple[np.ndarray, np.ndarray]
) -> None:
    frames, directions = clips
    files = [("video", (f"{i}.mp4", encode_clip(clip_frames(frames[i]), "mp4"), "video/mp4")) for i in range(4)]
    labels = top(client.post(ROUTE, files=files, params={"top_k": 3}))
    assert sum(label == DIRECTIONS[int(d)] for label, d in zip(labels, directions[:4], strict=True)) >= 3
    assert len(labels) == 4


def test_a_clip_sent_as_ordered_frames_equals_the_same_clip_as_a_file(
    client: httpx.Client, clips: tuple[np.ndarray, np.ndarray]
) -> None:
    frames, _ = clips
    pictures = clip_frames(frames[0])
    as_frames = client.post(
        ROUTE, files=[("frame", (f"{i}.png", encode(p), "image/png")) for i, p in enumerate(pictures)]
    )
    as_gif = client.post(ROUTE, content=encode_clip(pictures, "gif"), headers={"Content-Type": "image/gif"})
    assert as_frames.status_code == 200, as_frames.text
    a, b = as_frames.json()["predictions"][0]["labels"], as_gif.json()["predictions"][0]["labels"]
    assert a[0]["label"] == b[0]["label"]
    assert abs(a[0]["score"] - b[0]["score"]) < 1e-4  # GIF is lossless for greyscale frames
    as_json = client.post(
        ROUTE, json={"instances": [{"frames": [base64.b64encode(encode(p)).decode() for p in pictures]}]}
    )
    assert as_json.json()["predictions"][0]["labels"][0]["label"] == a[0]["label"]


def test_frames_in_reversed_order_move_the_other_way(
    client: httpx.Client, clips: tuple[np.ndarray, np.ndarray]
) -> None:
    frames, directions = clips
    forward = top(
        client.post(ROUTE, content=encode_clip(clip_frames(frames[1]), "gif"), headers={"Content-Type": "image/gif"})
    )
    backward = top(
        client.post(
            ROUTE, content=encode_clip(clip_frames(frames[1][::-1]), "gif"), headers={"Content-Type": "image/gif"}
        )
    )
    opposite = DIRECTIONS[(int(directions[1]) + 4) % 8]
    assert forward == [DIRECTIONS[int(directions[1])]]
    assert backward == [opposite]


@pytest.mark.parametrize(
    ("body", "media", "status"),
    [
        (b"this is not a video", "video/mp4", 415),
        (b"", "video/mp4", 400),
        (b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64, "video/mp4", 400),
    ],
)
def test_bad_clips_get_a_clear_4xx(client: httpx.Client, body: bytes, media: str, status: int) -> None:
    response = client.post(ROUTE, content=body, headers={"Content-Type": media})
    assert response.status_code == status, response.text
    assert response.json()["error"]["message"]


def test_a_single_still_image_is_refused_as_a_clip(client: httpx.Client, digit_pngs: list[tuple[bytes, int]]) -> None:
    response = client.post(ROUTE, content=digit_pngs[0][0], headers={"Content-Type": "image/png"})
    assert response.status_code == 415
    assert "at least 2 frames" in response.json()["error"]["message"]


def test_frames_of_different_sizes_are_refused(client: httpx.Client, clips: tuple[np.ndarray, np.ndarray]) -> None:
    pictures = clip_frames(clips[0][0])
    odd = pictures[1].resize((40, 40))
    files = [("frame", ("0.png", encode(pictures[0]), "image/png")), ("frame", ("1.png", encode(odd), "image/png"))]
    response = client.post(ROUTE, files=files)
    assert response.status_code == 400, response.text


def test_too_many_frames_answer_413(client: httpx.Client, clips: tuple[np.ndarray, np.ndarray]) -> None:
    # 600 frames: over the default config's limits.max_video_frames (512).
    long_clip = np.concatenate([clips[0][0]] * 38)[:600]
    response = client.post(
        ROUTE, content=encode_clip(clip_frames(long_clip), "gif"), headers={"Content-Type": "image/gif"}
    )
    assert response.status_code == 413, response.text


def test_v2_infer_classifies_clips(client: httpx.Client, clips: tuple[np.ndarray, np.ndarray]) -> None:
    frames, directions = clips
    metadata = client.get("/v2/models/moving_digits_lstm").json()
    assert [i["name"] for i in metadata["inputs"]] == ["video", "input"]
    assert metadata["inputs"][1]["shape"] == [-1, 16, 1, 48, 48]
    data = [base64.b64encode(encode_clip(clip_frames(frames[i]), "gif")).decode() for i in range(2)]
    response = client.post(
        "/v2/models/moving_digits_lstm/infer",
        json={
            "inputs": [{"name": "video", "datatype": "BYTES", "shape": [2], "data": data}],
            "outputs": [{"name": "probabilities", "parameters": {"classification": 1}}],
        },
    )
    assert response.status_code == 200, response.text
    (output,) = response.json()["outputs"]
    assert output["shape"] == [2, 1]
    assert [item.split(":")[-1] for item in output["data"]] == [DIRECTIONS[int(d)] for d in directions[:2]]


def test_video_route_refuses_image_models_frames(client: httpx.Client, digit_pngs: list[tuple[bytes, int]]) -> None:
    body = {"instances": [{"frames": [base64.b64encode(digit_pngs[0][0]).decode()] * 2}]}
    response = client.post("/v1/models/digits_cnn:predict", json=body)
    assert response.status_code == 400
