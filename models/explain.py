"""Explanation maps for classifiers: Grad-CAM for CNNs, attention rollout for vision transformers.

`explain_image` runs one image through a classifier, picks the class to explain (the top-1 class
by default) and returns a heatmap of where the decision came from, in the ORIGINAL image's pixels:
the map is computed at the model's input resolution and drawn back through the spec's
`input_geometry` (resize, crop, digit crop), so parts of the picture the model never saw get no heat.

Methods:
- `grad_cam` (Selvaraju et al. 2017): the gradient of the class score weights the channels of the
  last spatial feature map (the last module output shaped (N, C, h, w) with h*w > 1, found by
  forward hooks); ReLU of the weighted sum, scaled to [0, 1]. Used for every CNN, and for the
  transformers without a class token (swin_*, maxvit_t), on their last stage's feature map.
- `attention_rollout` (Abnar & Zuidema 2020): for torchvision's VisionTransformer (vit_*), the
  head-averaged attention of every encoder block plus the identity (the residual path),
  row-normalised and multiplied through the layers; the class token's row over the patches is
  the map, scaled to [0, 1]. Rollout follows the flow of information, not a class: the map is
  the same whichever target is asked for; label, index and score still name the target.

The module is shared with the serving path: hooks and attention patches are removed, and nothing
else about the module changes (no train mode, no requires_grad changes), even when a call fails.
Concurrent use of the same module during a call is the caller's to prevent.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional
from torchvision.models import VisionTransformer

from contract.answers import Explanation
from contract.params import ExplainParams
from models.images import png_base64
from models.registry import Affine, ModelSpec

Method = Literal["grad_cam", "attention_rollout"]


class ExplanationError(RuntimeError):
    """The model offers nothing to explain with (no spatial feature map, no attention): a server fault."""


# matplotlib's "jet" as piecewise-linear control points per channel (position, value);
# matplotlib is not a dependency, and a 256-entry lookup table is all a heatmap needs.
_JET: tuple[tuple[tuple[float, float], ...], ...] = (
    ((0.0, 0.0), (0.35, 0.0), (0.66, 1.0), (0.89, 1.0), (1.0, 0.5)),
    ((0.0, 0.0), (0.125, 0.0), (0.375, 1.0), (0.64, 1.0), (0.91, 0.0), (1.0, 0.0)),
    ((0.0, 0.5), (0.11, 1.0), (0.34, 1.0), (0.65, 0.0), (1.0, 0.0)),
)


def _lookup_table(points: tuple[tuple[tuple[float, float], ...], ...]) -> np.ndarray:
    positions = np.linspace(0.0, 1.0, 256)
    channels = [np.interp(positions, [p for p, _ in ch], [v for _, v in ch]) for ch in points]
    return np.round(np.stack(channels, axis=1) * 255).astype(np.uint8)


JET_LUT = _lookup_table(_JET)
"""(256, 3) uint8: heat 0..255 -> RGB, blue (cold) through green and yellow to red (hot)."""


def colorize(heat: np.ndarray) -> np.ndarray:
    """(H, W) heat in [0, 1] -> (H, W, 3) uint8 RGB through the jet lookup table."""
    levels = np.round(np.clip(heat, 0.0, 1.0) * 255).astype(np.uint8)
    colored: np.ndarray = JET_LUT[levels]
    return colored


def invert_affine(affine: Affine) -> Affine:
    """The inverse map (original pixel -> input pixel), as PIL's AFFINE transform wants it."""
    a, b, c, d, e, f = affine
    det = a * e - b * d
    if abs(det) < 1e-12:
        raise ValueError(f"input geometry {affine} is not invertible")
    return (e / det, -b / det, (b * f - c * e) / det, -d / det, a / det, (c * d - a * f) / det)


def to_original(heat: np.ndarray, size: tuple[int, int], affine: Affine | None) -> np.ndarray:
    """Draw an input-resolution (H_in, W_in) map into an original-size (H, W) canvas; 0 outside the input.

    `affine` maps input pixels to original pixels in continuous coordinates (pixel i spans [i, i+1),
    as PIL's transforms and resizes use them); None stretches the input over the whole original.
    """
    h_in, w_in = heat.shape
    if affine is None:
        affine = (size[0] / w_in, 0.0, 0.0, 0.0, size[1] / h_in, 0.0)
    source = Image.fromarray(np.ascontiguousarray(heat, dtype=np.float32), "F")
    canvas = source.transform(
        size, Image.Transform.AFFINE, data=invert_affine(affine), resample=Image.Resampling.BILINEAR, fillcolor=0.0
    )
    return np.asarray(canvas, dtype=np.float32)


def _resolve_target(spec: ModelSpec, target: int | str | None) -> int | None:
    """The class index asked for, or None for the top-1 class; ValueError for anything else."""
    if target is None:
        return None
    count = len(spec.categories)
    if isinstance(target, str):
        if target in spec.categories:
            return spec.categories.index(target)
        close = difflib.get_close_matches(target, spec.categories, n=3)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"target {target!r} is not a label of {spec.name}{hint}")
    if isinstance(target, bool) or not isinstance(target, int | np.integer):
        raise ValueError(f"target must be a class index or a label, not {type(target).__name__}")
    if not 0 <= int(target) < count:
        raise ValueError(f"target index {int(target)} is out of range for {spec.name} (0 to {count - 1})")
    return int(target)


def _normalise(cam: torch.Tensor) -> torch.Tensor:
    """Scale a non-negative map to a peak of 1 (all zeros stay zeros)."""
    peak = float(cam.max())
    return cam / peak if peak > 0 else torch.zeros_like(cam)


def _logits(spec: ModelSpec, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    outputs = spec.forward(module, [x])
    logits: torch.Tensor = outputs[0]
    return logits.reshape(-1)


@contextmanager
def _feature_maps(module: nn.Module, layer: str | None = None) -> Iterator[list[torch.Tensor]]:
    """While open, holds the last spatial (N, C, h, w) output of `layer` (default: of any submodule).

    Hooks are removed on exit.
    """
    last: list[torch.Tensor] = []

    def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
        # Hooks fire when a module finishes, so containers report after their children and the
        # last report before global pooling is the final feature map. 1x1 maps are pooled ones.
        if isinstance(output, torch.Tensor) and output.dim() == 4 and output.shape[-2] * output.shape[-1] > 1:
            last[:] = [output]

    try:
        watched = [module.get_submodule(layer)] if layer else list(module.modules())
    except AttributeError:
        raise ExplanationError(f"the model has no layer {layer!r} to explain with") from None
    handles = [m.register_forward_hook(hook) for m in watched]
    try:
        yield last
    finally:
        for handle in handles:
            handle.remove()


def _grad_cam(
    spec: ModelSpec, module: nn.Module, x: torch.Tensor, index: int | None
) -> tuple[torch.Tensor, int, torch.Tensor]:
    """(logits, explained index, (h, w) Grad-CAM map in [0, 1])."""
    # The input, not the parameters, carries requires_grad: every activation then joins the graph
    # and the module's own requires_grad flags stay untouched. autograd.grad fills no .grad.
    x = x.detach().requires_grad_(True)
    with _feature_maps(module, spec.explain_layer) as maps:
        logits = _logits(spec, module, x)
    if not maps:
        raise ExplanationError(f"{spec.name}: no spatial feature map found for Grad-CAM")
    activation = maps[0]
    chosen = int(logits.argmax()) if index is None else index
    (grad,) = torch.autograd.grad(logits[chosen], activation, allow_unused=True)
    if grad is None:
        raise ExplanationError(f"{spec.name}: the class score does not depend on the last feature map")
    weights = grad[0].float().mean(dim=(1, 2), keepdim=True)
    cam = torch.relu((weights * activation[0].detach().float()).sum(dim=0))
    return logits.detach(), chosen, _normalise(cam)


def _capturing_forward(original: Callable[..., Any], store: list[torch.Tensor]) -> Callable[..., Any]:
    """A MultiheadAttention forward that also returns and stores the head-averaged attention."""
    signature = inspect.signature(original)

    def forward(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        bound.arguments["need_weights"] = True
        bound.arguments["average_attn_weights"] = True
        output, attention = original(*bound.args, **bound.kwargs)
        store.append(attention.detach())
        return output, attention

    return forward


@contextmanager
def _attention_weights(module: nn.Module) -> Iterator[list[torch.Tensor]]:
    """While open, every MultiheadAttention of `module` records its attention; restored on exit."""
    store: list[torch.Tensor] = []
    saved: list[tuple[nn.MultiheadAttention, Any]] = []
    try:
        for mha in module.modules():
            if isinstance(mha, nn.MultiheadAttention):
                # An instance attribute shadows the class's forward; torchvision's EncoderBlock asks
                # for need_weights=False, so the weights exist only if we ask for them here.
                own = mha.__dict__.get("forward")
                saved.append((mha, own))
                mha.forward = _capturing_forward(mha.forward, store)  # type: ignore[method-assign]
        yield store
    finally:
        for mha, own in saved:
            if own is None:
                del mha.forward
            else:
                mha.forward = own  # type: ignore[method-assign]


def _attention_rollout(
    spec: ModelSpec, module: VisionTransformer, x: torch.Tensor, index: int | None
) -> tuple[torch.Tensor, int, torch.Tensor]:
    """(logits, explained index, (h, w) rollout of the class token over the patches in [0, 1])."""
    with torch.no_grad(), _attention_weights(module) as store:
        logits = _logits(spec, module, x)
    if not store:
        raise ExplanationError(f"{spec.name}: no attention weights captured for rollout")
    tokens = store[0].shape[-1]
    rollout = torch.eye(tokens, dtype=torch.float64, device=store[0].device)
    for attention in store:
        # The residual connection: half the signal bypasses attention (Abnar & Zuidema, eq. 1).
        a = attention[0].double() + torch.eye(tokens, dtype=torch.float64, device=attention.device)
        rollout = (a / a.sum(dim=-1, keepdim=True)) @ rollout
    grid = module.image_size // module.patch_size
    patches = rollout[0, 1:]
    if patches.numel() != grid * grid:
        raise ExplanationError(f"{spec.name}: {patches.numel()} patch tokens do not form a {grid}x{grid} grid")
    cam = patches.reshape(grid, grid).float()
    # Rollout has a large floor shared by all patches (the identity); min-max shows the contrast.
    cam = _normalise(cam - cam.min())
    chosen = int(logits.argmax()) if index is None else index
    return logits, chosen, cam


def explain_image(
    spec: ModelSpec,
    module: nn.Module,
    image: Image.Image,
    params: ExplainParams | None = None,
    *,
    device: torch.device | None = None,
) -> Explanation:
    """Explain `module`'s decision for the class `params` asks for (index or label; none: the
    top-1) on one decoded image: the class and its softmax score, the method, the heatmap
    (greyscale PNG at the original size) and the overlay (the jet-coloured heat blended over the
    original at `params.alpha`). A target the model does not have is a ValueError; a model with
    nothing to explain with (no spatial feature map) is an ExplanationError.
    """
    if not spec.explainable:
        raise ValueError(f"{spec.name}: explanation maps apply to image classifiers, not {spec.task}")
    params = params or ExplainParams()
    index = _resolve_target(spec, params.wanted)
    if image.mode != spec.image_mode:
        image = image.convert(spec.image_mode)
    parameter = next(module.parameters(), None)
    if device is None:
        device = parameter.device if parameter is not None else torch.device("cpu")
    dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.float32
    method: Method
    # Gradients are needed even if the caller runs under inference_mode or no_grad.
    with torch.inference_mode(False), torch.enable_grad():
        x = spec.preprocess(image).to(device=device, dtype=dtype)
        if isinstance(module, VisionTransformer):
            method = "attention_rollout"
            logits, index, cam = _attention_rollout(spec, module, x, index)
        else:
            method = "grad_cam"
            logits, index, cam = _grad_cam(spec, module, x, index)
    score = float(torch.softmax(logits.float(), dim=0)[index])
    # The map at the model's input resolution, then into the original's pixels.
    h_in, w_in = x.shape[-2:]
    upsampled = functional.interpolate(cam[None, None], size=(h_in, w_in), mode="bilinear", align_corners=False)
    heat_input = upsampled[0, 0].clamp(0.0, 1.0).cpu().numpy()
    geometry = spec.input_geometry(image) if spec.input_geometry is not None else None
    # Non-finite scores (broken weights) give no heat rather than an unreadable PNG.
    heat = np.clip(np.nan_to_num(to_original(heat_input, image.size, geometry)), 0.0, 1.0)
    heatmap = Image.fromarray(np.round(heat * 255).astype(np.uint8), "L")
    overlay = Image.blend(image.convert("RGB"), Image.fromarray(colorize(heat), "RGB"), params.alpha)
    return Explanation(
        label=spec.categories[index],
        index=index,
        score=score,
        method=method,
        heatmap=png_base64(heatmap),
        overlay=png_base64(overlay),
        size=[image.width, image.height],
    )
