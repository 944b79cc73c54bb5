"""Hardened clip decoding: round trips, limits, hostile bytes, and clips sent as separate frames."""

from __future__ import annotations

import io
import struct

import av
import numpy as np
import pytest
from PIL import Image

from models.images import CorruptImage, DecodeTimeout, ImageError, ImageLimits, ImageTooLarge, UnsupportedImageFormat
from models.video_io import (
    ClipFormat,
    ClipTooLong,
    NotAClip,
    TooManyFrames,
    VideoLimits,
    decode_clip,
    decode_frames,
    encode_clip,
    uniform_indices,
)
from tests.conftest import encode


def _clip(count: int = 16, size: tuple[int, int] = (48, 32)) -> list[Image.Image]:
    """A bright square moving right 2 px per frame on a dark background."""
    frames = []
    for i in range(count):
        arr = np.full((size[1], size[0]), 30, dtype=np.uint8)
        arr[8:18, 2 * i : 2 * i + 10] = 220
        frames.append(Image.fromarray(arr, "L"))
    return frames


def _centre_x(img: Image.Image) -> float:
    arr = np.asarray(img.convert("L"), dtype=np.float64) - 30.0
    arr = np.clip(arr, 0, None)
    return float((arr.sum(axis=0) * np.arange(arr.shape[1])).sum() / arr.sum())


def _truth_centres(count: int = 16) -> list[float]:
    return [2 * i + 4.5 for i in range(count)]


@pytest.fixture(scope="module")
def mp4() -> bytes:
    return encode_clip(_clip(), "mp4")


@pytest.fixture(scope="module")
def gif() -> bytes:
    return encode_clip(_clip(), "gif")


@pytest.mark.parametrize("fmt", ["mp4", "webm", "gif"])
def test_clip_round_trips_with_every_frame_in_order(fmt: ClipFormat) -> None:
    data = encode_clip(_clip(), fmt)
    frames = decode_clip(data, VideoLimits(), "L")
    assert len(frames) == 16
    assert {f.size for f in frames} == {(48, 32)}
    assert {f.mode for f in frames} == {"L"}
    centres = [_centre_x(f) for f in frames]
    assert np.allclose(centres, _truth_centres(), atol=0.6)


@pytest.mark.parametrize("fmt", ["mp4", "webm", "gif"])
def test_frames_decode_in_rgb_by_default(fmt: ClipFormat) -> None:
    frames = decode_clip(encode_clip(_clip(4), fmt))
    assert len(frames) == 4
    assert frames[0].mode == "RGB"


@pytest.mark.parametrize("fmt", ["png", "webp"])
def test_apng_and_animated_webp_decode_through_pillow(fmt: str) -> None:
    first, *rest = _clip(6)
    data = encode(first, fmt.upper(), save_all=True, append_images=rest, duration=125, loop=0, lossless=True)
    frames = decode_clip(data, VideoLimits(), "L")
    assert len(frames) == 6
    assert np.allclose([_centre_x(f) for f in frames], _truth_centres(6), atol=0.01)


def test_max_output_frames_keeps_evenly_spaced_frames_in_order(mp4: bytes) -> None:
    frames = decode_clip(mp4, VideoLimits(), "L", max_output_frames=4)
    centres = [_centre_x(f) for f in frames]
    assert len(frames) == 4
    assert centres == sorted(centres)
    assert centres[0] < 8
    assert centres[-1] > 20


def test_uniform_indices_spread_over_the_clip_and_repeat_a_short_one() -> None:
    assert uniform_indices(16, 16) == list(range(16))
    assert uniform_indices(32, 4) == [4, 12, 20, 28]
    assert uniform_indices(3, 6) == [0, 0, 1, 1, 2, 2]
    with pytest.raises(ValueError, match="cannot sample"):
        uniform_indices(0, 4)


def test_clip_longer_than_the_limit_is_refused_from_its_header(mp4: bytes) -> None:
    # 16 frames at 8 fps: 2 seconds.
    with pytest.raises(ClipTooLong, match=r"lasts 2\.0s"):
        decode_clip(mp4, VideoLimits(max_duration_s=1.0))


def test_gif_longer_than_the_limit_is_refused_while_decoding(gif: bytes) -> None:
    with pytest.raises(ClipTooLong):
        decode_clip(gif, VideoLimits(max_duration_s=1.0))


def test_clip_with_too_many_frames_is_refused_from_its_header(mp4: bytes, gif: bytes) -> None:
    for data in (mp4, gif):
        with pytest.raises(TooManyFrames, match="16 frames; the limit is 8"):
            decode_clip(data, VideoLimits(max_frames=8))


def test_frame_cap_holds_while_decoding_when_the_header_declares_no_count() -> None:
    webm = encode_clip(_clip(), "webm")  # Matroska declares a duration, not a frame count
    with pytest.raises(TooManyFrames, match="more than 8 frames"):
        decode_clip(webm, VideoLimits(max_frames=8))


@pytest.mark.parametrize("fmt", ["mp4", "webm", "gif"])
def test_frames_larger_than_the_pixel_cap_are_refused(fmt: ClipFormat) -> None:
    data = encode_clip(_clip(4), fmt)
    with pytest.raises(ImageTooLarge, match="48x32 = 1536 pixels"):
        decode_clip(data, VideoLimits(max_pixels_per_frame=1000))


def test_total_pixels_held_are_capped(mp4: bytes) -> None:
    with pytest.raises(ImageTooLarge, match="in total"):
        decode_clip(mp4, VideoLimits(max_total_pixels=48 * 32 * 5))
    assert len(decode_clip(mp4, VideoLimits(max_total_pixels=48 * 32 * 5), max_output_frames=2)) == 2


def test_clip_over_the_byte_limit_is_refused(mp4: bytes) -> None:
    with pytest.raises(ImageTooLarge, match="bytes; the limit is 100"):
        decode_clip(mp4, VideoLimits(max_bytes=100))


def test_truncated_mp4_is_corrupt(mp4: bytes) -> None:
    for cut in (len(mp4) // 4, len(mp4) // 2, len(mp4) - 20):
        with pytest.raises(CorruptImage):
            decode_clip(mp4[:cut])


def test_truncated_webm_is_corrupt_although_its_demuxer_reads_it_as_shorter() -> None:
    webm = encode_clip(_clip(32), "webm")
    for cut in (len(webm) // 3, len(webm) - 50):
        with pytest.raises(CorruptImage, match="truncated"):
            decode_clip(webm[:cut])


def test_truncated_gif_is_corrupt(gif: bytes) -> None:
    with pytest.raises(CorruptImage):
        decode_clip(gif[: len(gif) // 2])


@pytest.mark.parametrize(
    "data",
    [b"hello, world" * 20, b"\x00" * 500, b"%PDF-1.4\n" + b"x" * 100, b"#EXTM3U\n#EXTINF:1,\nfile:///etc/passwd\n"],
)
def test_bytes_that_are_no_clip_format_are_unsupported(data: bytes) -> None:
    with pytest.raises(UnsupportedImageFormat, match="unsupported video format"):
        decode_clip(data)


def test_empty_upload_is_corrupt() -> None:
    with pytest.raises(CorruptImage, match="empty clip"):
        decode_clip(b"")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_still_image_is_not_a_clip(fmt: str) -> None:
    with pytest.raises(NotAClip, match="at least 2 frames"):
        decode_clip(encode(_clip(1)[0], fmt))


def test_single_frame_video_and_gif_are_not_clips() -> None:
    formats: tuple[ClipFormat, ...] = ("mp4", "gif")
    for fmt in formats:
        with pytest.raises(NotAClip, match="at least 2 frames"):
            decode_clip(encode_clip(_clip(1), fmt))


def test_not_a_clip_is_an_unsupported_format_error() -> None:
    assert issubclass(NotAClip, UnsupportedImageFormat)
    assert issubclass(TooManyFrames, ImageTooLarge)
    assert issubclass(ClipTooLong, ImageTooLarge)


def test_video_without_an_allowed_codec_is_unsupported() -> None:
    buf = io.BytesIO()
    with av.open(buf, "w", format="mov") as container:
        stream = container.add_stream("png", rate=8)
        stream.width, stream.height, stream.pix_fmt = 48, 32, "rgb24"
        for img in _clip(3):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.asarray(img.convert("RGB")), format="rgb24")))
        container.mux(stream.encode(None))
    with pytest.raises(UnsupportedImageFormat, match="video codec png is not supported"):
        decode_clip(buf.getvalue())


def test_portrait_phone_video_is_turned_upright() -> None:
    frames = []
    for _ in range(3):
        arr = np.zeros((48, 64), dtype=np.uint8)
        arr[:10, :10] = 255  # top-left corner as stored
        frames.append(Image.fromarray(arr, "L"))
    data = bytearray(encode_clip(frames, "mp4"))
    # A phone held upright stores landscape pixels and a track matrix "rotate 90 clockwise".
    matrix = data.index(b"tkhd") + 44
    data[matrix : matrix + 36] = struct.pack(">9i", 0, 0x10000, 0, -0x10000, 0, 0, 0, 0, 0x40000000)
    upright = decode_clip(bytes(data), mode="L")[0]
    assert upright.size == (48, 64)
    ys, xs = np.nonzero(np.asarray(upright) > 128)
    # The corner is now top-right.
    assert ys.mean() < 10
    assert xs.mean() > 38


def _mutations(data: bytes, rng: np.random.Generator, count: int) -> list[bytes]:
    out = []
    for k in range(count):
        b = bytearray(data)
        if k % 4 == 0:
            b = b[: int(rng.integers(1, len(b)))]
        else:
            for _ in range(int(rng.integers(1, 9))):
                b[int(rng.integers(len(b)))] = int(rng.integers(256))
        out.append(bytes(b))
    return out


@pytest.mark.parametrize("fmt", ["mp4", "webm", "gif"])
def test_damaged_clips_raise_only_image_errors(fmt: ClipFormat) -> None:
    data = encode_clip(_clip(), fmt)
    rng = np.random.default_rng(7)
    outcomes: set[str] = set()
    for mutant in _mutations(data, rng, 200):
        try:
            frames = decode_clip(mutant, VideoLimits(max_decode_seconds=5.0), "L", max_output_frames=16)
        except ImageError as exc:
            outcomes.add(type(exc).__name__)
        else:
            assert 2 <= len(frames) <= 16
            outcomes.add("decoded")
    assert "CorruptImage" in outcomes


def test_separate_frames_decode_in_order() -> None:
    pngs = [encode(f) for f in _clip(6)]
    frames = decode_frames(pngs, VideoLimits(), ImageLimits(), "L")
    assert np.allclose([_centre_x(f) for f in frames], _truth_centres(6), atol=0.01)
    picked = decode_frames(pngs, VideoLimits(), ImageLimits(), "L", max_output_frames=3)
    assert len(picked) == 3


def test_separate_frames_of_different_sizes_are_refused() -> None:
    pngs = [encode(f) for f in _clip(3)] + [encode(Image.new("L", (40, 40)))]
    with pytest.raises(CorruptImage, match="frame 4 is 40x40 but the first is 48x32"):
        decode_frames(pngs, VideoLimits(), ImageLimits(), "L")


def test_separate_frames_are_capped_and_checked_each() -> None:
    pngs = [encode(f) for f in _clip(5)]
    with pytest.raises(TooManyFrames, match="5 frames; the limit is 4"):
        decode_frames(pngs, VideoLimits(max_frames=4), ImageLimits())
    with pytest.raises(NotAClip):
        decode_frames(pngs[:1], VideoLimits(), ImageLimits())
    with pytest.raises(UnsupportedImageFormat):
        decode_frames([*pngs[:2], b"not an image"], VideoLimits(), ImageLimits())
    with pytest.raises(ImageTooLarge):
        decode_frames(pngs, VideoLimits(), ImageLimits(max_pixels=1000))


def test_encode_clip_refuses_what_it_cannot_encode() -> None:
    with pytest.raises(ValueError, match="even width and height"):
        encode_clip(_clip(2, (47, 32)), "mp4")
    with pytest.raises(ValueError, match="same size"):
        encode_clip([*_clip(2), Image.new("L", (10, 10))], "gif")
    with pytest.raises(ValueError, match="no frames"):
        encode_clip([], "webm")


def test_decoding_past_the_time_budget_is_a_decode_timeout(mp4: bytes, gif: bytes) -> None:
    for data in (mp4, gif):
        with pytest.raises(DecodeTimeout, match="longer than the 0s limit"):
            decode_clip(data, VideoLimits(max_decode_seconds=0.0))
