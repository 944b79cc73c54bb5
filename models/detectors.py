"""Object detectors: every torchvision detection model by name, and the bundled digits_detector.

Every detector answers `{"detections": [{"label", "index", "score", "box": [x1, y1, x2, y2]}]}` per
image, boxes in the original image's pixels, sorted by score; parameters `score_threshold` and
`max_detections`. Its Open Inference Protocol outputs are the raw detections, padded per batch.
Mask R-CNN and Keypoint R-CNN answer with their boxes only.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torchvision
from PIL import Image
from torch import nn
from torch.nn import functional as F  # noqa: N812
from torchvision.models.detection._utils import overwrite_eps
from torchvision.ops.misc import FrozenBatchNorm2d

from contract.answers import Detection as Found
from contract.answers import DetectionPrediction
from contract.params import DetectionParams
from models import heldout
from models import weights as wsrc
from models.classifiers import WeightsChoice, _load_strict, make_preprocess, resolve_weights_choice
from models.images import ink_map
from models.registry import Affine, Item, ModelSpec, Postprocess, Task, TensorSpec, WeightsInfo, register

# torchvision's detectors resize to at most 1333 px themselves; a larger input only costs memory.
MAX_SIDE = 1333
PLACEHOLDER_CATEGORIES = frozenset({"__background__", "N/A"})
# Weights after which torchvision's builders set FrozenBatchNorm2d's eps to 0 (they were trained so).
_ZERO_EPS_WEIGHTS = frozenset(
    {
        "FasterRCNN_ResNet50_FPN_Weights.COCO_V1",
        "KeypointRCNN_ResNet50_FPN_Weights.COCO_V1",
        "MaskRCNN_ResNet50_FPN_Weights.COCO_V1",
        "RetinaNet_ResNet50_FPN_Weights.COCO_V1",
    }
)
_TORCHVISION_FAMILY = "torchvision.detection"

DETECTION_OUTPUTS: tuple[TensorSpec, ...] = (
    # Boxes x1, y1, x2, y2 in model-input pixels (the preprocessed tensor), not the original's.
    TensorSpec("boxes", "FP32", (-1, -1, 4)),
    TensorSpec("scores", "FP32", (-1, -1)),
    TensorSpec("labels", "INT64", (-1, -1)),  # -1 pads rows with fewer detections
    TensorSpec("num_detections", "INT32", (-1,)),
)
_V2_NOTE = (
    "v2 outputs: every detection the model returns, padded per batch (boxes 0, scores 0, labels -1), "
    "boxes in model-input pixels"
)

Detection = dict[str, torch.Tensor]
"""One image's raw detections: boxes (N, 4) x1 y1 x2 y2, labels (N,) int64, scores (N,); on the CPU."""
Geometry = Callable[[int, int], Affine]
"""(original width, height) -> where a model-input pixel lies in the original (scale and offset only)."""


# -- Shared by every detector: parameters, postprocess, v2 tensors, batch forward ------------------


def detection_postprocess(categories: Sequence[str], geometry: Geometry, skip: frozenset[int]) -> Postprocess:
    """Batch postprocess: threshold, sort and cap each item's detections; boxes to original pixels.

    Boxes map back through `geometry` when the item has the original's size (the serving layer
    gives it) and are clipped to the image; without it they stay in model-input pixels.
    Labels in `skip` (placeholder categories such as `__background__`) are never reported.
    """
    skipped = torch.tensor(sorted(skip), dtype=torch.int64)

    def one(output: Detection, threshold: float, limit: int, size: tuple[int, int] | None) -> DetectionPrediction:
        scores, labels = output["scores"].float(), output["labels"].long()
        keep = torch.nonzero((scores >= threshold) & ~torch.isin(labels, skipped)).flatten()
        keep = keep[scores[keep].argsort(descending=True, stable=True)][:limit]
        boxes = output["boxes"].float()[keep]
        if size is not None:
            a, _, c, _, e, f = geometry(*size)
            boxes = boxes * torch.tensor([a, e, a, e]) + torch.tensor([c, f, c, f])
            limits = torch.tensor([size[0], size[1], size[0], size[1]], dtype=torch.float32)
            boxes = torch.minimum(boxes.clamp(min=0.0), limits)
        return DetectionPrediction(
            detections=[
                Found(label=categories[i], index=i, score=s, box=[round(v, 2) for v in box])
                for i, s, box in zip(labels[keep].tolist(), scores[keep].tolist(), boxes.tolist(), strict=True)
            ]
        )

    def postprocess(outputs: Sequence[Detection], items: Sequence[Item[DetectionParams]]) -> list[DetectionPrediction]:
        return [
            one(out, item.params.score_threshold, item.params.max_detections, item.size)
            for out, item in zip(outputs, items, strict=True)
        ]

    return postprocess


def detection_tensors(outputs: Sequence[Detection]) -> dict[str, np.ndarray]:
    """Open Inference Protocol outputs: detections padded to the batch's largest count."""
    counts = [len(out["scores"]) for out in outputs]
    width = max(counts, default=0)
    boxes = np.zeros((len(outputs), width, 4), dtype=np.float32)
    scores = np.zeros((len(outputs), width), dtype=np.float32)
    labels = np.full((len(outputs), width), -1, dtype=np.int64)
    for row, (out, count) in enumerate(zip(outputs, counts, strict=True)):
        boxes[row, :count] = out["boxes"].float().numpy()
        scores[row, :count] = out["scores"].float().numpy()
        labels[row, :count] = out["labels"].long().numpy()
    return {"boxes": boxes, "scores": scores, "labels": labels, "num_detections": np.asarray(counts, dtype=np.int32)}


def detection_forward(module: nn.Module, inputs: Sequence[torch.Tensor]) -> list[Detection]:
    """Batch forward of a torchvision detector: a list of variable-size images in, one dict per image out."""
    outputs = module(list(inputs))
    return [{key: out[key].detach().cpu() for key in ("boxes", "labels", "scores")} for out in outputs]


def _fitted_size(width: int, height: int, side: int) -> tuple[int, int]:
    """(width, height) scaled, keeping the aspect ratio, so that the longer side is `side`."""
    scale = side / max(width, height)
    return max(1, min(side, round(width * scale))), max(1, min(side, round(height * scale)))


def _scale_geometry(model_size: Callable[[int, int], tuple[int, int]]) -> Geometry:
    """The geometry of a preprocess that resizes the original to `model_size(width, height)` at the top left."""

    def geometry(width: int, height: int) -> Affine:
        w, h = model_size(width, height)
        return (width / w, 0.0, 0.0, 0.0, height / h, 0.0)

    return geometry


# -- Every torchvision detector by name -------------------------------------------------------------


def _capped_size(width: int, height: int) -> tuple[int, int]:
    return (width, height) if max(width, height) <= MAX_SIDE else _fitted_size(width, height, MAX_SIDE)


capped_geometry = _scale_geometry(_capped_size)


def _capped_preprocess(transform: Callable[[Image.Image], torch.Tensor], img: Image.Image) -> torch.Tensor:
    img = img.convert("RGB")
    size = _capped_size(img.width, img.height)
    if size != img.size:
        img = img.resize(size, Image.Resampling.BILINEAR)
    return transform(img)


@functools.cache
def _nominal_size(key: str) -> tuple[int, int]:
    """The (height, width) the detector resizes to, read off its own transform (built on the meta device)."""
    with torch.device("meta"):  # architecture only: no memory, no weights
        model = torchvision.models.get_model(key, weights=None, weights_backbone=None)
    transform = model.transform
    if transform.fixed_size is not None:
        height, width = transform.fixed_size
        return int(height), int(width)
    side = int(transform.min_size[-1])
    return side, side


def _freeze_batch_norms(model: nn.Module, state: wsrc.StateDict) -> None:
    """Swap in FrozenBatchNorm2d where the weights were saved from one (no num_batches_tracked).

    torchvision's builders put FrozenBatchNorm2d in the backbones of pretrained detectors, but
    BatchNorm2d when built without weights; this rebuilds what the weights were trained in.
    """
    for name, module in list(model.named_modules()):
        if (
            isinstance(module, nn.BatchNorm2d)
            and f"{name}.running_mean" in state
            and f"{name}.num_batches_tracked" not in state
        ):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, FrozenBatchNorm2d(module.num_features, eps=module.eps))


def _build_detector(key: str, choice: WeightsChoice) -> nn.Module:
    meta = choice.meta.meta
    kwargs: dict[str, Any] = {"num_classes": len(meta["categories"])}
    if "keypoint_names" in meta:
        kwargs["num_keypoints"] = len(meta["keypoint_names"])
    # torchvision's builders would torch.load the file with weights_only=False; we read the state
    # weights-only ourselves and rebuild the architecture the builder makes for these weights
    # (not classifiers.build_torchvision: batch norms must be swapped before the state loads).
    state = choice.state()
    model: nn.Module = torchvision.models.get_model(key, weights=None, weights_backbone=None, **kwargs)
    if state is not None:
        _freeze_batch_norms(model, state)
        _load_strict(model, state, key)
        if str(choice.builder) in _ZERO_EPS_WEIGHTS:
            overwrite_eps(model, 0.0)
    return model.eval()


def torchvision_detector(key: str) -> Callable[[str, str | None, str | None], ModelSpec]:
    """Spec factory for the torchvision detector `key`."""

    def factory(name: str, weights: str | None, sha256: str | None) -> ModelSpec:
        choice = resolve_weights_choice(key, name, weights, sha256)
        categories = tuple(choice.meta.meta["categories"])
        # Index 0 is the background class of every torchvision detector; N/A marks unused COCO ids.
        skip = frozenset(i for i, c in enumerate(categories) if i == 0 or c in PLACEHOLDER_CATEGORIES)
        return ModelSpec(
            name=name,
            task=Task.DETECTION,
            build=functools.partial(_build_detector, key, choice),
            preprocess=functools.partial(_capped_preprocess, make_preprocess(choice.meta.transforms())),
            postprocess=detection_postprocess(categories, capped_geometry, skip),
            tensor_outputs=detection_tensors,
            outputs=DETECTION_OUTPUTS,
            categories=categories,
            input_size=_nominal_size(key),
            weights=choice.info,
            family=_TORCHVISION_FAMILY,
            description=f"torchvision {key} ({choice.meta}); images over {MAX_SIDE} px are downscaled; {_V2_NOTE}",
            forward=detection_forward,
            input_geometry=lambda img: capped_geometry(img.width, img.height),
        )

    return factory


# -- digits_detector: a small CenterNet trained here on digit scenes --------------------------------

SCENE_SIDE = 128  # the model sees every image fitted into a 128x128 canvas (models.training.scenes)
STRIDE = 4  # input pixels per output cell side
DIGIT_CATEGORIES = tuple(str(d) for d in range(10))
TOP_K = 100
CLASSES_PER_PEAK = 3
MIN_SCORE = 0.01
DIGITS_WEIGHTS_FILE = "digits_detector.safetensors"
# Pinned by models/training/train_digits_detector.py; tests check pin, file and report agree.
DIGITS_WEIGHTS_SHA256 = "cfd32de6386871f64b074703a8eb31b9660abd068c43dd4d9040727a25bc57c3"


def _conv(cin: int, cout: int, stride: int = 1, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class DigitsDetector(nn.Module):
    """CenterNet-style: a digit-centre heatmap, the digit's class, box size and centre offset at stride 4.

    Input (B, 1, 128, 128) ink maps; output (B, 15, 32, 32): the centre logit, 10 class logits,
    log box width and height in cells, and the centre's offset within its cell. One class-agnostic
    heatmap plus a softmax over classes learns faster than CenterNet's heatmap per class.
    """

    centre_calibration: torch.Tensor

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.num_classes = num_classes
        # The digits carry no detail finer than 2 px at 128x128 (8x8 originals, 20 px and up), so
        # the network works at half resolution: a quarter of the cost.
        self.pool = nn.AvgPool2d(2)
        self.stage1 = nn.Sequential(_conv(1, 24, 2), _conv(24, 32))  # stride 4
        self.stage2 = nn.Sequential(_conv(32, 48, 2), _conv(48, 48))  # stride 8
        self.stage3 = nn.Sequential(_conv(48, 64, 2), _conv(64, 64))  # stride 16
        self.lateral2 = _conv(48, 64, kernel=1)
        self.merge2 = _conv(64, 64)
        self.reduce2 = _conv(64, 32, kernel=1)
        self.lateral1 = _conv(32, 32, kernel=1)
        self.merge1 = _conv(32, 32)
        self.head = nn.Conv2d(32, 1 + num_classes + 4, 1)
        if self.head.bias is not None:
            # The heatmap starts near a 10% prior, as in CenterNet, so the focal loss starts stable.
            nn.init.constant_(self.head.bias[:1], -2.19)
        # Platt scaling of the centre logit, fitted after training on validation scenes
        # (models/training/train_digits_detector.py): a peak's centre score is then the chance
        # that a digit is there, so a detection's score (centre times class probability) is the
        # chance it is right, and the default threshold of 0.5 keeps what is more likely right
        # than wrong. CenterNet's Gaussian targets leave the raw peaks well under that. (1, 0):
        # the raw logit, as while training.
        self.register_buffer("centre_calibration", torch.tensor([1.0, 0.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s1 = self.stage1(self.pool(x))
        s2 = self.stage2(s1)
        s3 = self.stage3(s2)
        p2 = self.merge2(F.interpolate(s3, scale_factor=2.0, mode="nearest") + self.lateral2(s2))
        p1 = self.merge1(F.interpolate(self.reduce2(p2), scale_factor=2.0, mode="nearest") + self.lateral1(s1))
        out: torch.Tensor = self.head(p1)
        scale, shift = self.centre_calibration
        return torch.cat([out[:, :1] * scale + shift, out[:, 1:]], dim=1)


def centre_peaks(heads: torch.Tensor, num_classes: int = 10, top_k: int = TOP_K) -> tuple[torch.Tensor, ...]:
    """Each image's `top_k` heatmap peaks (3x3 local maxima): centre score, the peak cell's other
    heads, and the box in input pixels; shapes (B, K), (B, C, K), (B, K, 4)."""
    centre = heads[:, :1].sigmoid()
    peaks = centre * (F.max_pool2d(centre, 3, stride=1, padding=1) == centre)
    width = centre.shape[3]
    peak_scores, cell = peaks.flatten(1).topk(min(top_k, centre.shape[2] * width), dim=1)  # (B, K)
    picked = heads[:, 1:].flatten(2).gather(2, cell.unsqueeze(1).expand(-1, heads.shape[1] - 1, -1))
    sizes = picked[:, num_classes : num_classes + 2].clamp(-3.0, 4.0).exp() * STRIDE
    cx = ((cell % width).float() + picked[:, num_classes + 2]) * STRIDE
    cy = ((cell // width).float() + picked[:, num_classes + 3]) * STRIDE
    boxes = torch.stack([cx - sizes[:, 0] / 2, cy - sizes[:, 1] / 2, cx + sizes[:, 0] / 2, cy + sizes[:, 1] / 2], -1)
    return peak_scores, picked, boxes


def decode_centres(heads: torch.Tensor, num_classes: int = 10, top_k: int = TOP_K) -> list[Detection]:
    """Heatmap peaks as boxes in input pixels, each with its likeliest classes.

    A peak's score for a class is its centre score times the class probability; every peak is
    reported with its CLASSES_PER_PEAK likeliest classes (a second guess keeps recall when the
    first is wrong), and each image keeps its `top_k` best (peak, class) pairs.
    """
    peak_scores, picked, boxes = centre_peaks(heads, num_classes, top_k)
    batch = heads.shape[0]
    probs, classes = picked[:, :num_classes].softmax(dim=1).topk(CLASSES_PER_PEAK, dim=1)  # (B, G, K)
    pairs = (peak_scores.unsqueeze(1) * probs).flatten(1)  # (B, G*K): every (class guess, peak)
    scores, order = pairs.topk(min(top_k, pairs.shape[1]), dim=1)
    labels = classes.flatten(1).gather(1, order)
    boxes = boxes.gather(1, (order % boxes.shape[1]).unsqueeze(-1).expand(-1, -1, 4))
    results = []
    for row in range(batch):
        keep = scores[row] >= MIN_SCORE
        results.append(
            {
                "boxes": boxes[row][keep].detach().cpu(),
                "labels": labels[row][keep].detach().cpu(),
                "scores": scores[row][keep].detach().cpu(),
            }
        )
    return results


def digits_forward(module: nn.Module, inputs: Sequence[torch.Tensor]) -> list[Detection]:
    """Batch forward of digits_detector: one pass over the stacked canvases, then peak decoding."""
    return decode_centres(module(torch.stack(list(inputs))))


def _scene_size(width: int, height: int) -> tuple[int, int]:
    return _fitted_size(width, height, SCENE_SIDE)


scene_geometry = _scale_geometry(_scene_size)


def scene_preprocess(img: Image.Image) -> torch.Tensor:
    """Any picture -> 1x128x128 ink map (`models.images.ink_map`): fitted (longer side 128) at the
    top left, zero padded."""
    grey = img.convert("L")
    size = _scene_size(grey.width, grey.height)
    if size != grey.size:
        grey = grey.resize(size, Image.Resampling.BILINEAR)
    ink = ink_map(np.asarray(grey, dtype=np.float32) / 255.0)
    canvas = torch.zeros(1, SCENE_SIDE, SCENE_SIDE)
    canvas[0, : size[1], : size[0]] = torch.from_numpy(ink)
    return canvas


def _build_digits(load: bool) -> nn.Module:
    model = DigitsDetector(len(DIGIT_CATEGORIES))
    if load:
        model.load_state_dict(wsrc.load_bundled(DIGITS_WEIGHTS_FILE, DIGITS_WEIGHTS_SHA256), strict=True)
    return model.eval()


def _digits_factory(name: str, weights: str | None, sha256: str | None) -> ModelSpec:
    if weights not in (None, "bundled", "random"):
        raise wsrc.WeightsError(f"{name}: weights must be 'bundled' (default) or 'random'")
    random = weights == "random"
    info = (
        WeightsInfo("random", "random")
        if random
        else WeightsInfo("bundled", DIGITS_WEIGHTS_FILE, DIGITS_WEIGHTS_SHA256)
    )
    return ModelSpec(
        name=name,
        task=Task.DETECTION,
        build=functools.partial(_build_digits, not random),
        preprocess=scene_preprocess,
        postprocess=detection_postprocess(DIGIT_CATEGORIES, scene_geometry, frozenset()),
        tensor_outputs=detection_tensors,
        outputs=DETECTION_OUTPUTS,
        categories=DIGIT_CATEGORIES,
        input_size=(SCENE_SIDE, SCENE_SIDE),
        weights=info,
        image_mode="L",
        family="bundled.digits",
        description=(
            "CenterNet-style digit detector trained on digit scenes "
            f"(models/training/train_digits_detector.py); {_V2_NOTE} (the 128x128 canvas)"
        ),
        forward=digits_forward,
        input_geometry=lambda img: scene_geometry(img.width, img.height),
        held_out=heldout.detection_scenes,
    )


def _register_all() -> None:
    for key in torchvision.models.list_models(module=torchvision.models.detection):
        register(key, Task.DETECTION, torchvision_detector(key), family=_TORCHVISION_FAMILY)
    register("digits_detector", Task.DETECTION, _digits_factory, family="bundled.digits")


_register_all()
