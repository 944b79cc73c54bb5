"""Draw a model's answer onto the image it was about: boxes, mask overlays, heatmaps, labels.

Pillow only (ImageDraw and its default font), so that the client stays light: the predictions
are the API's JSON as the client returns them, with images as base64 PNGs.
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Mapping, Sequence
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from contract.tasks import Task

# Distinct, saturated colours (Tableau 10 then a few more), indexed by class index.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
    (255, 215, 0),
    (0, 128, 128),
)
BACKGROUND_LABELS = frozenset({"background", "__background__"})
MASK_ALPHA = 0.5
TASKS = tuple(Task)

Font = ImageFont.ImageFont | ImageFont.FreeTypeFont


class DrawError(ValueError):
    """A prediction that cannot be drawn: unknown task, or missing or malformed fields."""


def colour(index: int) -> tuple[int, int, int]:
    """The palette colour of a class index."""
    return PALETTE[index % len(PALETTE)]


def decode_png(b64: str) -> Image.Image:
    """A base64-encoded image of an API answer, decoded and loaded."""
    try:
        image = Image.open(io.BytesIO(base64.b64decode(b64, validate=True)))
        image.load()
    except (binascii.Error, ValueError, OSError) as exc:
        raise DrawError(f"not a base64-encoded image: {exc}") from None
    return image


def _font(image: Image.Image) -> Font:
    # Text about 1/20 of the smaller side, readable on thumbnails and on photos alike.
    size = max(10, min(image.size) // 20)
    try:
        return ImageFont.load_default(size=size)
    except (OSError, ImportError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _label(
    image: Image.Image,
    draw: ImageDraw.ImageDraw,
    xy: tuple[float, float],
    text: str,
    fill: tuple[int, int, int],
    font: Font,
) -> None:
    """Text on a filled box whose top-left corner is `xy`, kept inside the image."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    width, height = right - left + 4, bottom - top + 4
    x = min(max(xy[0], 0), max(image.width - width, 0))
    y = min(max(xy[1], 0), max(image.height - height, 0))
    draw.rectangle((x, y, x + width, y + height), fill=fill)
    # Black or white, whichever reads better on the box colour.
    ink = (0, 0, 0) if sum(fill) > 382 else (255, 255, 255)
    draw.text((x + 2 - left, y + 2 - top), text, fill=ink, font=font)


def _field(prediction: Mapping[str, Any], name: str, task: str) -> Any:
    if name not in prediction:
        raise DrawError(f"a {task} prediction has a {name!r} field; this one has {sorted(prediction)}")
    return prediction[name]


def _caption(image: Image.Image, text: str) -> Image.Image:
    out = image.convert("RGB")
    _label(out, ImageDraw.Draw(out), (0, 0), text, (0, 0, 0), _font(out))
    return out


def _classification(original: Image.Image, prediction: Mapping[str, Any]) -> Image.Image:
    labels: Sequence[Mapping[str, Any]] = _field(prediction, "labels", "classification")
    if not labels:
        return original.convert("RGB")
    top = labels[0]
    return _caption(original, f"{top['label']} {float(top['score']):.2f}")


def _detection(original: Image.Image, prediction: Mapping[str, Any]) -> Image.Image:
    detections: Sequence[Mapping[str, Any]] = _field(prediction, "detections", "detection")
    out = original.convert("RGB")
    draw = ImageDraw.Draw(out)
    font = _font(out)
    width = max(1, round(min(out.size) / 150))
    # Lowest score first, so that the most confident boxes and labels end up on top.
    for det in sorted(detections, key=lambda d: float(d["score"])):
        x1, y1, x2, y2 = (float(v) for v in det["box"])
        fill = colour(int(det["index"]))
        draw.rectangle((x1, y1, max(x1, x2), max(y1, y2)), outline=fill, width=width)
        text = f"{det['label']} {float(det['score']):.2f}"
        text_height = draw.textbbox((0, 0), text, font=font)[3] + 4
        # Above the box when there is room, else just inside its top edge.
        _label(out, draw, (x1, y1 - text_height if y1 >= text_height else y1), text, fill, font)
    return out


def _segmentation(original: Image.Image, prediction: Mapping[str, Any]) -> Image.Image:
    mask = decode_png(_field(prediction, "mask", "segmentation")).convert("L")
    base = original.convert("RGB")
    if mask.size != base.size:  # the API answers at the original size; a resized original still works
        mask = mask.resize(base.size, Image.Resampling.NEAREST)
    classes: Sequence[Mapping[str, Any]] = prediction.get("classes") or []
    background = {int(c["index"]) for c in classes if str(c["label"]) in BACKGROUND_LABELS}
    # Both shipped families put the background at index 0, even when min_fraction left it out of `classes`.
    background = background or {0}
    lut = [0] * 256 * 3
    for index in range(256):
        lut[index * 3 : index * 3 + 3] = colour(index)
    coloured = mask.convert("P")
    coloured.putpalette(lut)
    blended = Image.blend(base, coloured.convert("RGB"), MASK_ALPHA)
    foreground = mask.point([0 if i in background else 255 for i in range(256)])
    return Image.composite(blended, base, foreground)


def _explanation(original: Image.Image, prediction: Mapping[str, Any]) -> Image.Image:
    overlay = decode_png(_field(prediction, "overlay", "explanation")).convert("RGB")
    if overlay.size != original.size:
        overlay = overlay.resize(original.size, Image.Resampling.BILINEAR)
    if "label" not in prediction:
        return overlay
    return _caption(overlay, f"{prediction['label']} {float(prediction.get('score', 0.0)):.2f}")


def annotate_image(original: Image.Image, prediction: Mapping[str, Any], task: str) -> Image.Image:
    """A new image showing `prediction` (one item of an API answer) for a model of `task`.

    Classification: the top label and score in the top-left corner. Detection: a box per
    detection, coloured by class, with label and score. Segmentation: each non-background
    class's colour blended at 50% over its pixels. Denoising and generation: the returned
    image itself. Explanation (an item of :explain's `explanations`): the server's overlay.
    """
    try:
        if task in (Task.CLASSIFICATION, Task.VIDEO_CLASSIFICATION):
            return _classification(original, prediction)
        if task == Task.DETECTION:
            return _detection(original, prediction)
        if task == Task.SEGMENTATION:
            return _segmentation(original, prediction)
        if task == Task.EXPLANATION:
            return _explanation(original, prediction)
        if task in (Task.DENOISING, Task.GENERATION):
            return decode_png(_field(prediction, "image", task))
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, DrawError):
            raise
        raise DrawError(f"malformed {task} prediction: {exc!r}") from None
    raise DrawError(f"cannot draw task {task!r}; one of {', '.join(TASKS)}")
