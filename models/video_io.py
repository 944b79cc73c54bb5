"""Decode, validate and encode uploaded video clips: the clip counterpart of models.images.

Every byte comes from an untrusted client, and the rules follow models.images: refuse by size,
then by content (magic bytes pick the demuxer; FFmpeg never probes), then by what the header
declares (duration, frame count, frame size) before any frame is decoded, then again while
decoding (a header can lie), all under a time budget; and every failure PyAV or Pillow can
produce becomes an ImageError, so hostile input is answered 4xx, never a 500.

Animated GIF, APNG and animated WebP go through Pillow; MP4/MOV, WebM/Matroska and AVI through
PyAV (FFmpeg), with the demuxer forced by the sniffed signature, nested opens refused (no
playlist or reference can make FFmpeg read another file or URL) and an allowlist of codecs.
"""

from __future__ import annotations

import io
import logging
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Generic, Literal, TypeVar, cast

import av
import av.error
import numpy as np
from av.video.stream import VideoStream
from PIL import Image, ImageSequence

from models.images import (
    _DECODE_ERRORS,
    CorruptImage,
    DecodeTimeout,
    ImageError,
    ImageLimits,
    ImageTooLarge,
    UnsupportedImageFormat,
    _webp_canvas,
    decode_image,
    harden_pillow,
    to_mode,
)

logger = logging.getLogger(__name__)

MIN_FRAMES = 2  # a clip is motion: one still frame has none, so it is refused, not padded

# Containers by signature -> the FFmpeg demuxer forced for them (probing is never left to FFmpeg:
# its probe can pick demuxers such as hls or concat that open further files or URLs).
_ISO_BMFF_BOXES = (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip")
VIDEO_CONTAINERS = ("mp4", "mov", "webm", "mkv", "avi")
ANIMATIONS = ("gif", "apng", "webp")
# Video codecs decoded; anything else in an allowed container is refused (smaller attack surface).
VIDEO_CODECS = frozenset(
    {"h264", "hevc", "vp8", "vp9", "av1", "mpeg4", "mpeg1video", "mpeg2video", "mjpeg", "h263", "msmpeg4v3", "theora"}
)
# Pillow's failure modes (models.images), plus undecodable metadata text in a container.
_CLIP_DECODE_ERRORS: tuple[type[Exception], ...] = (*_DECODE_ERRORS, UnicodeError)
_NOT_A_CLIP = f"a clip needs at least {MIN_FRAMES} frames"


class TooManyFrames(ImageTooLarge):
    """The clip has, or declares, more frames than `VideoLimits.max_frames`."""


class ClipTooLong(ImageTooLarge):
    """The clip lasts, or declares, longer than `VideoLimits.max_duration_s`."""


class NotAClip(UnsupportedImageFormat):
    """A still image, or a video of fewer than MIN_FRAMES frames: there is no motion to classify."""


@dataclass(frozen=True)
class VideoLimits:
    """Per-clip limits; bytes, declared duration, frames and frame size are checked before decoding."""

    max_bytes: int = 64 * 1024 * 1024
    max_frames: int = 512  # frames decoded, kept or not
    max_duration_s: float = 60.0
    max_pixels_per_frame: int = 3840 * 2160  # 4K UHD
    # Pixels of the frames held in memory at once (decoded clips are sampled while decoding when
    # the caller asks for few frames): 2**28 holds 31 4K frames, 768 MiB as RGB.
    max_total_pixels: int = 2**28
    max_decode_seconds: float = 30.0


Kind = tuple[Literal["pillow", "av"], str]


def sniff_clip(data: bytes) -> Kind | None:
    """("pillow", Pillow format) or ("av", FFmpeg demuxer) by the leading bytes; None if not a clip format.

    Raises NotAClip for still images (JPEG, PNG without an animation chunk, still WebP).
    """
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return ("pillow", "GIF")
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        if _png_is_animated(data):
            return ("pillow", "PNG")
        raise NotAClip(f"{_NOT_A_CLIP}: this is a still png image")
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        # VP8X header flag 0x02: the file carries an animation (ANIM/ANMF chunks).
        if data[12:16] == b"VP8X" and len(data) > 20 and data[20] & 0x02:
            return ("pillow", "WEBP")
        raise NotAClip(f"{_NOT_A_CLIP}: this is a still webp image")
    if data[:3] == b"\xff\xd8\xff":
        raise NotAClip(f"{_NOT_A_CLIP}: this is a still jpeg image")
    if data[4:8] in _ISO_BMFF_BOXES:
        return ("av", "mov")  # FFmpeg's mov demuxer reads MP4, MOV, 3GP
    if data[:4] == b"\x1a\x45\xdf\xa3":
        return ("av", "matroska")  # EBML: Matroska and WebM
    if data[:4] == b"RIFF" and data[8:12] == b"AVI ":
        return ("av", "avi")
    return None


def _check_boxes(data: bytes) -> None:
    """Refuse an MP4/MOV whose top-level boxes run past the end of the bytes: it was cut short.

    FFmpeg reads a cut-off index (moov) as far as it goes and decodes what it can, so truncation
    is caught here, from the box sizes, before any decoding.
    """
    pos = 0
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos : pos + 4], "big")
        if size == 0:
            return  # the last box runs to the end of the file
        if size == 1:
            if pos + 16 > len(data):
                break
            size = int.from_bytes(data[pos + 8 : pos + 16], "big")
        if size < 8:
            raise CorruptImage(f"cannot decode mp4 clip: box at byte {pos} has an impossible size")
        pos += size
    if pos > len(data):
        raise CorruptImage(f"clip is truncated: its boxes need {pos} bytes, {len(data)} were sent")


def _ebml_vint(data: bytes, pos: int) -> tuple[int, int, bool]:
    """(value, length, unknown) of the EBML variable-size integer at `pos`; unknown = all value bits set."""
    if pos >= len(data) or data[pos] == 0:
        raise CorruptImage("cannot decode matroska clip: bad element size")
    length = 8 - data[pos].bit_length() + 1
    if pos + length > len(data):
        raise CorruptImage("clip is truncated inside a matroska header")
    value = int.from_bytes(data[pos : pos + length], "big") & ((1 << (7 * length)) - 1)
    return value, length, value == (1 << (7 * length)) - 1


def _check_segment(data: bytes) -> None:
    """Refuse a WebM/Matroska file whose Segment declares more bytes than were sent: it was cut short.

    Live recordings (MediaRecorder) write an unknown Segment size; those are not checked here.
    """
    size, length, _ = _ebml_vint(data, 4)  # the EBML header element, after its 4-byte ID
    pos = 4 + length + size
    if data[pos : pos + 4] != b"\x18\x53\x80\x67":
        return  # no Segment where one belongs: FFmpeg's demuxer decides
    size, length, unknown = _ebml_vint(data, pos + 4)
    end = pos + 4 + length + size
    if not unknown and end > len(data):
        raise CorruptImage(f"clip is truncated: its segment needs {end} bytes, {len(data)} were sent")


def _png_is_animated(data: bytes) -> bool:
    """Whether an acTL chunk comes before the first IDAT (the APNG rule)."""
    pos = 8
    while pos + 8 <= len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        chunk = data[pos + 4 : pos + 8]
        if chunk == b"acTL":
            return True
        if chunk in (b"IDAT", b"IEND"):
            return False
        pos += 12 + length
    return False


class _Budget:
    """The decode time budget of one request; reads past it end the input instead of raising.

    FFmpeg and Pillow decode in C and cannot be interrupted safely, but they pull their input
    through read(): past the deadline reads return end-of-file, the decoder stops at the next
    block, and `check` (called between frames) raises DecodeTimeout. Ending the input rather than
    raising inside read() keeps PyAV from printing the dropped exceptions of its I/O callback.
    """

    def __init__(self, seconds: float, deadline: float | None = None) -> None:
        self.seconds = seconds
        own = time.monotonic() + seconds
        self.deadline = own if deadline is None else min(own, deadline)

    @property
    def expired(self) -> bool:
        """Whether the deadline has passed."""
        return time.monotonic() > self.deadline

    def check(self) -> None:
        """Raise DecodeTimeout once the deadline has passed."""
        if self.expired:
            raise DecodeTimeout(f"decoding the clip took longer than the {self.seconds:g}s limit")

    def reader(self, data: bytes) -> io.BytesIO:
        """The bytes as a file that reads as ended once the deadline has passed."""
        budget = self

        class _Reader(io.BytesIO):
            def read(self, size: int | None = -1, /) -> bytes:
                return b"" if budget.expired else super().read(size)

        return _Reader(data)


T = TypeVar("T")


class _Sampler(Generic[T]):
    """Keeps every `stride`-th decoded frame, doubling the stride whenever 2x `keep` frames are held.

    Sampling while decoding bounds memory without knowing the frame count in advance: at the end
    between `keep` and 2x `keep` evenly spaced frames are held, and `uniform_indices` picks `keep`.
    With `keep` None every frame is held (within the limits).
    """

    def __init__(self, keep: int | None, limits: VideoLimits) -> None:
        if keep is not None and keep < 1:
            raise ValueError(f"max_output_frames must be at least 1, got {keep}")
        self.keep, self.limits = keep, limits
        self.stride, self.seen = 1, 0
        self.held: list[tuple[T, int]] = []

    def offer(self, width: int, height: int, timestamp: float | None) -> bool:
        """Count one decoded frame against the limits; True if the caller should hand it to `add`."""
        self.seen += 1
        if self.seen > self.limits.max_frames:
            raise TooManyFrames(f"clip has more than {self.limits.max_frames} frames, the limit")
        _check_frame_pixels(width, height, self.limits)
        if timestamp is not None and timestamp > self.limits.max_duration_s:
            raise ClipTooLong(f"clip runs longer than the {self.limits.max_duration_s:g}s limit")
        return (self.seen - 1) % self.stride == 0

    def add(self, item: T, pixels: int) -> None:
        """Hold a frame `offer` asked for, then drop every other one if too many are held."""
        self.held.append((item, pixels))
        if self.keep is not None and len(self.held) >= 2 * self.keep:
            self.held = self.held[::2]
            self.stride *= 2
        total = sum(p for _, p in self.held)
        if total > self.limits.max_total_pixels:
            raise ImageTooLarge(
                f"clip frames hold more than {self.limits.max_total_pixels} pixels in total; "
                "send fewer or smaller frames"
            )

    def result(self) -> list[T]:
        """The held frames, evenly thinned to `keep`."""
        items = [item for item, _ in self.held]
        if self.keep is None or len(items) <= self.keep:
            return items
        return [items[i] for i in uniform_indices(len(items), self.keep)]


def uniform_indices(count: int, length: int) -> list[int]:
    """`length` evenly spaced indices into `count` items: centres of equal spans, repeating when count < length."""
    if count < 1 or length < 1:
        raise ValueError(f"cannot sample {length} of {count} frames")
    return [min(count - 1, int((i + 0.5) * count / length)) for i in range(length)]


def _check_frame_pixels(width: int, height: int, limits: VideoLimits) -> None:
    if width <= 0 or height <= 0:
        raise CorruptImage("clip frame has no pixels")
    if width * height > limits.max_pixels_per_frame:
        raise ImageTooLarge(
            f"clip frames are {width}x{height} = {width * height} pixels; the limit is {limits.max_pixels_per_frame}"
        )


def decode_clip(
    data: bytes, limits: VideoLimits | None = None, mode: str = "RGB", *, max_output_frames: int | None = None
) -> list[Image.Image]:
    """Decode a video or animation into its frames in `mode`, in order, enforcing `limits`.

    With `max_output_frames`, at most that many evenly spaced frames are returned (and held in
    memory while decoding); every frame is still decoded and counted against the limits.
    """
    limits = limits or VideoLimits()
    budget = _Budget(limits.max_decode_seconds)
    if not data:
        raise CorruptImage("empty clip")
    if len(data) > limits.max_bytes:
        raise ImageTooLarge(f"clip is {len(data)} bytes; the limit is {limits.max_bytes}")
    kind = sniff_clip(data)
    if kind is None:
        raise UnsupportedImageFormat(
            f"unsupported video format; allowed: {', '.join(VIDEO_CONTAINERS)}, animated {', '.join(ANIMATIONS)}"
        )
    backend, fmt = kind
    what = fmt.lower()
    if fmt == "mov":
        _check_boxes(data)
    elif fmt == "matroska":
        _check_segment(data)
    sampler: _Sampler[Image.Image] = _Sampler(max_output_frames, limits)
    try:
        with warnings.catch_warnings():
            # Hostile files make Pillow warn; the outcome is decided by the checks here.
            warnings.simplefilter("ignore")
            if backend == "av":
                _decode_video(data, fmt, mode, limits, budget, sampler)
            else:
                _decode_animation(data, fmt, mode, limits, budget, sampler)
    except ImageError:
        raise
    except Exception as exc:
        # A decoder that stopped because its input ended at the deadline fails like a damaged file.
        budget.check()
        raise _as_image_error(exc, what) from exc
    budget.check()
    frames = sampler.result()
    if sampler.seen < MIN_FRAMES:
        raise NotAClip(f"{_NOT_A_CLIP}; this {what} clip has {sampler.seen}")
    return frames


def _as_image_error(exc: Exception, what: str) -> ImageError:
    """The ImageError that a decoding failure means for the client."""
    if isinstance(exc, av.error.FFmpegError):
        # Includes FFmpeg's own ENOMEM on absurd sizes in damaged headers: the file's fault.
        return CorruptImage(f"cannot decode {what} clip: truncated or damaged ({exc.strerror or 'error'})")
    if isinstance(exc, Image.DecompressionBombError | MemoryError):
        return ImageTooLarge(f"{what} clip is too large to decode")
    if isinstance(exc, _CLIP_DECODE_ERRORS):
        return CorruptImage(f"cannot decode {what} clip: truncated or damaged")
    # Still the client's bytes: 400, not 500; logged because it may be a bug worth a look.
    logger.warning("unexpected %s decoding a %s clip", type(exc).__name__, what, exc_info=exc)
    return CorruptImage(f"cannot decode {what} clip")


def _refuse_nested_open(url: str, flags: int, options: dict[str, Any]) -> Any:
    # Only the uploaded bytes may be read: no demuxer may open a referenced file or URL.
    raise PermissionError("clips may not reference other files")


def _declared_seconds(container: Any, stream: Any) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return float(container.duration) / av.time_base
    return None


def _decode_video(
    data: bytes, demuxer: str, mode: str, limits: VideoLimits, budget: _Budget, sampler: _Sampler[Image.Image]
) -> None:
    """Demux and decode with PyAV; header checks first, then per-frame checks."""
    with av.open(
        budget.reader(data), "r", format=demuxer, metadata_errors="ignore", io_open=_refuse_nested_open
    ) as container:
        if not container.streams.video:
            raise UnsupportedImageFormat("the file has no video stream")
        stream = container.streams.video[0]
        codec = stream.codec_context
        if codec is None or codec.name not in VIDEO_CODECS:
            raise UnsupportedImageFormat(
                f"video codec {codec.name if codec is not None else 'unknown'} is not supported; "
                f"allowed: {', '.join(sorted(VIDEO_CODECS))}"
            )
        declared_frames = int(stream.frames or 0)
        declared_seconds = _declared_seconds(container, stream)
        if declared_frames > limits.max_frames:
            raise TooManyFrames(f"clip has {declared_frames} frames; the limit is {limits.max_frames}")
        if declared_seconds is not None and declared_seconds > limits.max_duration_s:
            raise ClipTooLong(f"clip lasts {declared_seconds:.1f}s; the limit is {limits.max_duration_s:g}s")
        if codec.width or codec.height:
            _check_frame_pixels(codec.width, codec.height, limits)
        # FFmpeg refuses to allocate larger frames even if a later header in the stream asks for them.
        codec.options = {"max_pixels": str(limits.max_pixels_per_frame)}
        start: float | None = None
        last = 0.0
        for frame in container.decode(stream):
            budget.check()
            if frame.is_corrupt:
                raise CorruptImage(f"cannot decode {demuxer} clip: frame {sampler.seen + 1} is damaged")
            t = frame.time
            if t is not None:
                start = t if start is None else start
                last = t - start
            if sampler.offer(frame.width, frame.height, last if start is not None else None):
                rgb = Image.fromarray(frame.to_ndarray(format="rgb24"), "RGB")
                sampler.add(_upright(to_mode(rgb, mode), frame.rotation), frame.width * frame.height)
        budget.check()
        _check_complete(sampler.seen, declared_frames, last, declared_seconds, stream.average_rate)


def _check_complete(
    decoded: int, declared_frames: int, span: float, declared_seconds: float | None, rate: Fraction | None
) -> None:
    """Refuse a clip that decoded to much less than its header declares: it was cut short.

    FFmpeg's demuxers treat a cut-off file as a shorter one; the header tells them apart. A
    little slack allows for edit lists and streams that end before the container.
    """
    if decoded == 0:
        raise CorruptImage("cannot decode clip: no video frame could be decoded")
    if declared_frames > 0 and decoded < declared_frames - max(1, declared_frames // 10):
        raise CorruptImage(f"clip is truncated: its header declares {declared_frames} frames, {decoded} decoded")
    if declared_frames == 0 and declared_seconds:
        frame_time = float(1 / rate) if rate else 0.0
        if span + frame_time < declared_seconds / 2:
            raise CorruptImage(
                f"clip is truncated: its header declares {declared_seconds:.1f}s, {span + frame_time:.1f}s decoded"
            )


def _upright(img: Image.Image, rotation: int) -> Image.Image:
    """The frame turned as its display matrix says (phones store portrait video on its side)."""
    quarter = round(rotation / 90) % 4
    if quarter == 0:
        return img
    return img.transpose(
        (Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270)[quarter - 1]
    )


def _decode_animation(
    data: bytes, fmt: str, mode: str, limits: VideoLimits, budget: _Budget, sampler: _Sampler[Image.Image]
) -> None:
    """Decode GIF / APNG / animated WebP frames with Pillow; declared size and frames checked first."""
    harden_pillow()
    if fmt == "WEBP":
        canvas = _webp_canvas(data)
        if canvas is not None:
            # libwebp allocates the whole canvas when the file is opened.
            _check_frame_pixels(*canvas, limits)
    img = Image.open(budget.reader(data), formats=[fmt])
    _check_frame_pixels(*img.size, limits)
    declared = int(getattr(img, "n_frames", 1))
    if declared > limits.max_frames:
        raise TooManyFrames(f"clip has {declared} frames; the limit is {limits.max_frames}")
    if declared < MIN_FRAMES:
        raise NotAClip(f"{_NOT_A_CLIP}; this {fmt.lower()} image has {declared}")
    elapsed_ms = 0.0
    for frame in _frames(img):
        budget.check()
        # A frame's timestamp is when it starts: the sum of the durations before it.
        if sampler.offer(frame.width, frame.height, elapsed_ms / 1000.0):
            kept = to_mode(frame, mode)
            sampler.add(kept.copy() if kept is frame else kept, frame.width * frame.height)
        elapsed_ms += float(frame.info.get("duration") or 0.0)


def _frames(img: Image.Image) -> Iterator[Image.Image]:
    for frame in ImageSequence.Iterator(img):
        frame.load()
        yield frame


def decode_frames(
    frames: Sequence[bytes],
    limits: VideoLimits | None = None,
    image_limits: ImageLimits | None = None,
    mode: str = "RGB",
    *,
    max_output_frames: int | None = None,
) -> list[Image.Image]:
    """Decode a clip sent as separate still images, in order; every frame must have the same size.

    Each frame goes through `models.images.decode_image` under `image_limits`, sharing one decode
    budget; with `max_output_frames`, only that many evenly spaced frames are decoded and kept.
    """
    limits = limits or VideoLimits()
    if len(frames) < MIN_FRAMES:
        raise NotAClip(f"{_NOT_A_CLIP}; got {len(frames)}")
    if len(frames) > limits.max_frames:
        raise TooManyFrames(f"clip has {len(frames)} frames; the limit is {limits.max_frames}")
    size = sum(len(f) for f in frames)
    if size > limits.max_bytes:
        raise ImageTooLarge(f"clip frames are {size} bytes together; the limit is {limits.max_bytes}")
    budget = _Budget(limits.max_decode_seconds)
    wanted = range(len(frames)) if max_output_frames is None else sorted(set(_pick(len(frames), max_output_frames)))
    decoded: list[Image.Image] = []
    for index in wanted:
        budget.check()
        img = decode_image(frames[index], mode, image_limits, deadline=budget.deadline)
        _check_frame_pixels(*img.size, limits)
        if decoded and img.size != decoded[0].size:
            first, other = decoded[0].size, img.size
            raise CorruptImage(
                f"frame {index + 1} is {other[0]}x{other[1]} but the first is {first[0]}x{first[1]}: "
                "all frames of a clip must have the same size"
            )
        decoded.append(img)
        if len(decoded) * img.width * img.height > limits.max_total_pixels:
            raise ImageTooLarge(f"clip frames hold more than {limits.max_total_pixels} pixels in total")
    return decoded


def _pick(count: int, keep: int) -> list[int]:
    if keep < 1:
        raise ValueError(f"max_output_frames must be at least 1, got {keep}")
    return list(range(count)) if count <= keep else uniform_indices(count, keep)


ClipFormat = Literal["mp4", "webm", "gif"]
_VIDEO_ENCODERS: dict[str, tuple[str, dict[str, str]]] = {
    # Constant quality (crf) rather than a bitrate, so small and large clips both come out well.
    "mp4": ("libx264", {"crf": "18", "preset": "fast"}),
    "webm": ("libvpx", {"crf": "8", "b": "4M"}),
}


def encode_clip(frames: Sequence[Image.Image], fmt: ClipFormat = "mp4", fps: int = 8) -> bytes:
    """Encode frames of one size as an MP4 (H.264), WebM (VP8) or animated GIF; for clients and tests.

    MP4 and WebM store 4:2:0 colour and so need an even width and height. GIF merges identical
    consecutive frames (Pillow's encoder), so a clip that stands still encodes to fewer frames.
    """
    if not frames:
        raise ValueError("no frames to encode")
    if fps < 1:
        raise ValueError(f"fps must be at least 1, got {fps}")
    width, height = frames[0].size
    if any(f.size != (width, height) for f in frames):
        raise ValueError("all frames of a clip must have the same size")
    if fmt == "gif":
        buf = io.BytesIO()
        first, *rest = frames
        first.save(buf, format="GIF", save_all=True, append_images=rest, duration=round(1000 / fps), loop=0)
        return buf.getvalue()
    if fmt not in _VIDEO_ENCODERS:
        raise ValueError(f"unknown clip format {fmt!r}; choose mp4, webm or gif")
    if width % 2 or height % 2:
        raise ValueError(f"{fmt} needs an even width and height; got {width}x{height}")
    codec, options = _VIDEO_ENCODERS[fmt]
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as container:
        stream = cast(VideoStream, container.add_stream(codec, rate=fps, options=options))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for img in frames:
            frame = av.VideoFrame.from_ndarray(np.asarray(img.convert("RGB")), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buf.getvalue()
