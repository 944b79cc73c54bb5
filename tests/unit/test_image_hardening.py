"""Hostile image input straight into decode_image: every failure is an ImageError, and the
limits (pixels before and after decoding, frames, time, PNG metadata chunks) hold."""

from __future__ import annotations

import logging
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

import models.images as images
from models.images import (
    CorruptImage,
    DecodeTimeout,
    ImageError,
    ImageLimits,
    ImageTooLarge,
    UnsupportedImageFormat,
    decode_image,
)
from tests.security.corpus import (
    CorpusCase,
    encode,
    generate,
    insert_chunks,
    main,
    mutations,
    picture,
    png_chunk,
    png_chunks,
)

CORPUS = generate()
# The image error each HTTP status of the corpus stands for (deployments.errors.MODEL_ERRORS).
ERROR_OF_STATUS: dict[int, type[ImageError]] = {400: CorruptImage, 413: ImageTooLarge, 415: UnsupportedImageFormat}


def _frames(count: int) -> list[Image.Image]:
    return [Image.new("RGB", (4, 4), (255 * (i % 2), 10 * i % 256, 0)) for i in range(count)]


def _apng(count: int) -> bytes:
    frames = _frames(count)
    return encode(frames[0], "PNG", save_all=True, append_images=frames[1:])


def _animated_webp(count: int) -> bytes:
    frames = _frames(count)
    return encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True)


@pytest.fixture(scope="module")
def noise_png() -> bytes:
    """A 1500x1500 noise PNG: ~6.8 MB that no compressor shrinks, so many read blocks."""
    rng = np.random.default_rng(7)
    return encode(Image.fromarray(rng.integers(0, 256, (1500, 1500, 3), dtype=np.uint8)), "PNG", compress_level=1)


# ---- the corpus ------------------------------------------------------------------------


@pytest.mark.parametrize("case", CORPUS, ids=lambda c: c.name)
def test_decode_succeeds_or_raises_the_expected_image_error_when_given_a_corpus_case(case: CorpusCase) -> None:
    (status,) = case.expected  # every corpus case has one outcome when decoded directly
    if status == 200:
        assert decode_image(case.data, "L").mode == "L"
        return
    # Anything but an ImageError escapes pytest.raises and fails the test: no leaks.
    with pytest.raises(ImageError) as raised:
        decode_image(case.data, "L")
    assert isinstance(raised.value, ERROR_OF_STATUS[status]), repr(raised.value)
    assert not isinstance(raised.value, DecodeTimeout)


def test_corpus_covers_the_issue_when_generated() -> None:
    names = [c.name for c in CORPUS]
    assert sum(n.startswith("png_truncated_at_") for n in names) >= 20
    assert sum(n.startswith("jpeg_truncated_at_") for n in names) >= 20
    for required in ("empty_body", "gif_10000_frames", "png_declares_100000x100000", "png_1bit_10000x10000"):
        assert required in names
    assert {s for c in CORPUS for s in c.expected} == {200, 400, 413, 415}
    assert sum(len(c.data) for c in CORPUS) < 30 * 1024 * 1024


def test_corpus_cli_writes_every_case_and_a_manifest_when_given_a_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(tmp_path / "corpus")]) == 0
    written = {p.name for p in (tmp_path / "corpus").iterdir()}
    assert written == {c.filename for c in CORPUS} | {"manifest.json"}
    assert f"{len(CORPUS)} cases" in capsys.readouterr().out


def test_mutated_images_decode_or_raise_image_errors_when_fuzzed() -> None:
    seeds = [encode(picture(48, 32, seed=1), fmt) for fmt in ("PNG", "JPEG", "WEBP")]
    outcomes: dict[str, int] = {}
    for _, data in mutations(seeds, 600, seed=99):
        try:
            decode_image(data, "L")
            outcome = "decoded"
        except ImageError as exc:  # anything else fails the test
            outcome = type(exc).__name__
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    # Both branches are exercised: the fuzzer is not just producing garbage or no-ops.
    assert outcomes.get("decoded", 0) > 0
    assert outcomes.get("CorruptImage", 0) > 0


# ---- frames ----------------------------------------------------------------------------


@pytest.mark.parametrize("make", [_apng, _animated_webp], ids=["apng", "webp"])
def test_animation_is_refused_when_it_has_more_frames_than_max_frames(make: Callable[[int], bytes]) -> None:
    data = make(5)
    with pytest.raises(ImageTooLarge, match="5 frames; the limit is 4"):
        decode_image(data, limits=ImageLimits(max_frames=4))
    first = decode_image(data, limits=ImageLimits(max_frames=5))
    assert first.getpixel((0, 0)) == (0, 0, 0)  # the first frame, not the last


def test_only_the_first_frame_is_decoded_when_later_frames_are_broken() -> None:
    data = bytearray(_apng(3))
    for offset, kind, payload in png_chunks(bytes(data)):
        if kind == b"fdAT":  # the later frames' data: keep the sequence number, garble the pixels
            garbage = payload[:4] + b"\xde" * (len(payload) - 4)
            data[offset : offset + 12 + len(payload)] = png_chunk(b"fdAT", garbage)
    assert decode_image(bytes(data)).getpixel((0, 0)) == (0, 0, 0)
    # And the frame count is refused from the header, before any frame is read.
    with pytest.raises(ImageTooLarge, match="frames"):
        decode_image(bytes(data), limits=ImageLimits(max_frames=2))


# ---- pixels ----------------------------------------------------------------------------


def test_webp_canvas_is_checked_before_opening_when_it_declares_too_many_pixels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    case = next(c for c in CORPUS if c.name == "webp_vp8x_declares_10000x10000")

    def never(*args: object, **kwargs: object) -> Image.Image:
        raise AssertionError("libwebp would allocate the canvas: Image.open must not be reached")

    monkeypatch.setattr(images.Image, "open", never)
    with pytest.raises(ImageTooLarge, match="10000x10000"):
        decode_image(case.data)


def test_pixel_count_is_rechecked_when_loading_yields_more_pixels_than_declared(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    original = PngImagePlugin.PngImageFile.load

    def load_then_grow(self: PngImagePlugin.PngImageFile) -> object:
        pixels = original(self)
        self._size = (10_000, 10_000)  # a header that lied and a decoder that believed the data
        return pixels

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", load_then_grow)
    with pytest.raises(ImageTooLarge, match="10000x10000"):
        decode_image(encode(picture(16, 16), "PNG"))


def test_pixel_count_is_rechecked_when_the_exif_turn_yields_more_pixels(monkeypatch: pytest.MonkeyPatch) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(picture(16, 16), "JPEG", exif=exif)
    monkeypatch.setattr(Image.Image, "transpose", lambda self, method: Image.new("1", (8000, 8000)))
    with pytest.raises(ImageTooLarge, match="8000x8000"):
        decode_image(data)


def test_exif_orientation_is_ignored_when_the_exif_block_is_broken() -> None:
    img = picture(60, 20)
    data = encode(img, "JPEG", exif=b"Exif\0\0MM\0*\xff\xff\xff\xff" + bytes(8))
    assert decode_image(data).size == (60, 20)


# ---- time ------------------------------------------------------------------------------


def test_decode_times_out_when_the_budget_is_smaller_than_the_decode(noise_png: bytes) -> None:
    data = noise_png
    with pytest.raises(DecodeTimeout, match="1e-06s") as raised:
        decode_image(data, limits=ImageLimits(max_decode_seconds=1e-6))
    assert isinstance(raised.value, CorruptImage)  # answered 400 like any undecodable image
    assert decode_image(data, limits=ImageLimits(max_decode_seconds=60.0)).size == (1500, 1500)


def test_decode_times_out_when_a_shared_request_deadline_has_passed() -> None:
    data = encode(picture(16, 16), "PNG")
    with pytest.raises(DecodeTimeout):
        decode_image(data, deadline=0.0)  # time.monotonic() is always past zero


def test_slow_decode_stops_between_read_blocks_when_the_deadline_passes(
    monkeypatch: pytest.MonkeyPatch, noise_png: bytes
) -> None:
    reads: list[int] = []
    original = images._DeadlineReader.read

    def expire_on_20th_read(self: images._DeadlineReader, size: int | None = -1, /) -> bytes:
        reads.append(self.tell())
        if len(reads) == 20:  # well into the pixel data: the decode "became slow" here
            self._deadline = 0.0
        return original(self, size)

    monkeypatch.setattr(images._DeadlineReader, "read", expire_on_20th_read)
    with pytest.raises(DecodeTimeout):
        decode_image(noise_png)
    assert len(reads) == 20  # the first read past the deadline failed and no read followed
    assert 65536 < reads[-1] < len(noise_png) // 2  # it stopped inside the pixel data, early


# ---- PNG metadata chunks ---------------------------------------------------------------


def test_png_text_limits_are_tightened_at_decode_time_when_pillow_is_looser(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(PngImagePlugin, "MAX_TEXT_CHUNK", 64 * 1024 * 1024)
    monkeypatch.setattr(PngImagePlugin, "MAX_TEXT_MEMORY", 1024 * 1024 * 1024)
    decode_image(encode(picture(8, 8), "PNG"))
    assert PngImagePlugin.MAX_TEXT_CHUNK == images.PNG_MAX_TEXT_CHUNK
    assert PngImagePlugin.MAX_TEXT_MEMORY == images.PNG_MAX_TEXT_MEMORY


def test_png_text_limits_are_kept_when_already_stricter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(PngImagePlugin, "MAX_TEXT_CHUNK", 1024)
    data = insert_chunks(encode(picture(8, 8), "PNG"), png_chunk(b"zTXt", b"k\0\0" + zlib.compress(bytes(4096))))
    with pytest.raises(ImageTooLarge, match="metadata"):
        decode_image(data)
    assert PngImagePlugin.MAX_TEXT_CHUNK == 1024


def test_small_png_text_chunks_decode_when_under_the_limits() -> None:
    text = zlib.compress(b"a caption " * 1000)
    data = insert_chunks(encode(picture(8, 8), "PNG"), png_chunk(b"zTXt", b"Comment\0\0" + text))
    assert decode_image(data).size == (8, 8)


# ---- exception mapping -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (OSError("broken"), CorruptImage),
        (SyntaxError("broken"), CorruptImage),
        (ValueError("broken"), CorruptImage),
        (EOFError("broken"), CorruptImage),
        (struct.error("broken"), CorruptImage),
        (IndexError("broken"), CorruptImage),
        (TypeError("broken"), CorruptImage),
        (ZeroDivisionError("broken"), CorruptImage),
        (KeyError("broken"), CorruptImage),
        (zlib.error("broken"), CorruptImage),
        (RuntimeError("an unknown bug"), CorruptImage),
        (MemoryError(), ImageTooLarge),
        (Image.DecompressionBombError("bomb"), ImageTooLarge),
        (ValueError("Too much memory used in text chunks: 9>MAX_TEXT_MEMORY"), ImageTooLarge),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else v.__name__,
)
def test_pillow_failure_becomes_an_image_error_when_decoding_raises_it(
    monkeypatch: pytest.MonkeyPatch, raised: Exception, expected: type[ImageError]
) -> None:
    def fail(self: object) -> None:
        raise raised

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", fail)
    with pytest.raises(expected) as caught:
        decode_image(encode(picture(8, 8), "PNG"))
    assert caught.value.__cause__ is raised
    assert "broken" not in str(caught.value)  # Pillow's wording is not the client's message


def test_unknown_failure_is_logged_with_its_traceback_when_mapped(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def fail(self: object) -> None:
        raise RuntimeError("an unknown bug")

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", fail)
    with caplog.at_level(logging.WARNING, logger="models.images"), pytest.raises(CorruptImage):
        decode_image(encode(picture(8, 8), "PNG"))
    assert any(r.exc_info and "RuntimeError" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit])
def test_interrupts_propagate_when_raised_during_decoding(
    monkeypatch: pytest.MonkeyPatch, interrupt: type[BaseException]
) -> None:
    def stop(self: object) -> None:
        raise interrupt

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", stop)
    with pytest.raises(interrupt):
        decode_image(encode(picture(8, 8), "PNG"))


def test_pillow_warnings_do_not_escape_when_a_hostile_file_triggers_them() -> None:
    # An APNG whose acTL declares zero frames makes Pillow warn; pytest turns warnings into errors.
    data = bytearray(_apng(2))
    offset, _, payload = next(c for c in png_chunks(bytes(data)) if c[1] == b"acTL")
    data[offset : offset + 20] = png_chunk(b"acTL", struct.pack(">I", 0) + payload[4:])
    assert decode_image(bytes(data)).size == (4, 4)


def test_mutations_are_reproducible_when_seeded() -> None:
    seeds = [encode(picture(16, 16), "PNG")]
    assert mutations(seeds, 20, seed=5) == mutations(seeds, 20, seed=5)
    assert mutations(seeds, 20, seed=5) != mutations(seeds, 20, seed=6)
