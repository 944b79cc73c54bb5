"""Optional inference backends of a built classifier: eager, channels_last, ONNX Runtime, int8.

Each backend returns an `nn.Module` that takes and returns torch tensors, so a spec's `forward`
and `postprocess` run unchanged on it. `benchmarks/backends.py` measures each backend's top-1
agreement with eager PyTorch and its throughput; `tests/unit/test_backends.py` holds it to 99%.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from contract.backends import BACKENDS, Backend
from models.registry import ModelSpec, Task

__all__ = ["BACKENDS", "Backend"]  # defined in contract.backends

# The exported graph's tensor names (one input, one output: classifiers only).
ONNX_INPUT = "input"
ONNX_OUTPUT = "logits"
# Preferred first; only those the installed onnxruntime build has are used (the PyPI
# `onnxruntime` wheel has CPU only; `onnxruntime-gpu` adds CUDA and TensorRT).
_GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")

logger = logging.getLogger(__name__)


def _device(module: nn.Module) -> torch.device:
    """Where the module's parameters live (CPU for a module without parameters)."""
    parameter = next(module.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


class ChannelsLast(nn.Module):
    """Runs `module` (its 4-D weights already channels_last) on channels_last inputs."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The wrapped module's output for `x` converted to channels_last."""
        out: torch.Tensor = self.module(x.contiguous(memory_format=torch.channels_last))
        return out


class OnnxRuntimeModule(nn.Module):
    """An ONNX Runtime session behind nn.Module's interface: torch tensor in, torch tensor out."""

    def __init__(self, session: Any, device: torch.device) -> None:
        super().__init__()
        self.session = session
        self.device = device

    @property
    def providers(self) -> list[str]:
        """The execution providers the session runs on, preferred first."""
        providers: list[str] = self.session.get_providers()
        return providers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the batch `x`, on the device `x` came from."""
        # Through host memory even with the CUDA provider: simple and correct; IO binding would
        # save the two copies on a GPU.
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        (logits,) = self.session.run([ONNX_OUTPUT], {ONNX_INPUT: array})
        return torch.from_numpy(logits).to(x.device)


def onnx_providers(device: torch.device) -> list[str | tuple[str, dict[str, Any]]]:
    """Execution providers for a module on `device`: TensorRT and CUDA first on a GPU, then CPU."""
    import onnxruntime

    available = set(onnxruntime.get_available_providers())
    providers: list[str | tuple[str, dict[str, Any]]] = []
    if device.type == "cuda":
        # Only a replica given a GPU (its module on CUDA) uses one: the provider being installed
        # does not mean this replica may use the card.
        options = {"device_id": device.index or 0}
        providers = [(name, options) for name in _GPU_PROVIDERS if name in available]
        if not providers:
            logger.warning("onnxruntime has no GPU provider here (install onnxruntime-gpu); running on CPU")
    return [*providers, "CPUExecutionProvider"]


def export_onnx(module: nn.Module, spec: ModelSpec, path: Path) -> None:
    """Write `module` as ONNX to `path` with a dynamic batch axis (torch.export-based exporter)."""
    # The torch.export-based exporter (dynamo=True, the default since torch 2.9; it needs onnx and
    # onnxscript): the TorchScript one (dynamo=False) is deprecated and warns on every export.
    # Batch 2 in the example: torch.export specialises a dimension traced at size 1.
    example = torch.zeros(2, *spec.input_shape, device=_device(module))
    try:
        torch.onnx.export(
            module,
            (example,),
            path,
            dynamo=True,
            input_names=[ONNX_INPUT],
            output_names=[ONNX_OUTPUT],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            verbose=False,
        )
    except Exception as exc:
        raise RuntimeError(f"model {spec.name!r}: ONNX export failed: {exc}") from exc


def onnx_module(module: nn.Module, spec: ModelSpec) -> OnnxRuntimeModule:
    """`module` exported to ONNX and loaded in an ONNX Runtime session using torch's thread count."""
    import onnxruntime

    device = _device(module)
    options = onnxruntime.SessionOptions()
    # Same intra-op threads as torch (the replica's CPUs); no inter-op pool on top of them.
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    # Idle workers would otherwise spin between batches, taking CPU from the replica's decoding.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    with tempfile.TemporaryDirectory(prefix="onnx-") as tmp:
        path = Path(tmp) / f"{spec.name}.onnx"
        export_onnx(module.eval(), spec, path)
        # The session reads the graph and weights now; the files can go when it is built.
        session = onnxruntime.InferenceSession(str(path), options, providers=onnx_providers(device))
    return OnnxRuntimeModule(session, device)


def int8_module(module: nn.Module, spec: ModelSpec) -> nn.Module:
    """A copy of `module` with int8 dynamic quantization of its Linear layers (CPU only).

    Dynamic quantization covers Linear (and recurrent) layers only: convolutions stay float,
    so CNNs, whose time is in their convolutions, gain little; classifier heads and
    transformers' MLPs gain most.
    """
    if _device(module).type != "cpu":
        raise ValueError(f"model {spec.name!r}: backend 'int8' runs on CPU only (dynamic quantization kernels)")
    with warnings.catch_warnings():
        # torch.ao.quantization is deprecated in favour of torchao, which still lacks an
        # eager-mode CPU equivalent; quantize_dynamic works in this torch and is measured.
        warnings.filterwarnings("ignore", "torch.ao.quantization is deprecated", DeprecationWarning)
        warnings.filterwarnings("ignore", ".*quantized tensor creation functions.*", UserWarning)
        quantized: nn.Module = torch.ao.quantization.quantize_dynamic(  # type: ignore[no-untyped-call]
            module, {nn.Linear}, dtype=torch.qint8
        )
    return quantized.eval()


@dataclass(frozen=True)
class Parity:
    """How a backend's outputs compare with eager PyTorch's on the same inputs."""

    images: int
    top1_agreement: float  # fraction of inputs whose top-1 class is the same
    # The same for logits less their per-class mean over the inputs: the input-dependent part.
    # Random weights favour one class whatever the input, which makes plain top-1 agree trivially.
    centered_top1_agreement: float
    max_abs_logit_diff: float
    distinct_top1: int  # eager's distinct top-1 classes: 1 means plain agreement proves little
    shapes_equal: bool


def _logits(module: nn.Module, spec: ModelSpec, inputs: Sequence[torch.Tensor], batch: int) -> torch.Tensor:
    """The module's outputs for `inputs`, `batch` at a time, through the spec's own forward."""
    with torch.inference_mode():
        rows = [out for i in range(0, len(inputs), batch) for out in spec.forward(module, inputs[i : i + batch])]
    return torch.stack(rows).float().cpu()


def parity(
    reference: nn.Module, candidate: nn.Module, spec: ModelSpec, inputs: Sequence[torch.Tensor], batch: int = 16
) -> Parity:
    """Compare `candidate` (a backend) with `reference` (eager) on preprocessed `inputs`."""
    expected = _logits(reference, spec, inputs, batch)
    actual = _logits(candidate, spec, inputs, batch)
    top1 = expected.argmax(dim=1)
    if expected.shape != actual.shape:
        return Parity(len(inputs), 0.0, 0.0, float("inf"), len(set(top1.tolist())), False)

    def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a.argmax(dim=1) == b.argmax(dim=1)).float().mean())

    centered = agreement(expected - expected.mean(dim=0), actual - actual.mean(dim=0))
    diff = float((expected - actual).abs().max())
    return Parity(len(inputs), agreement(expected, actual), centered, diff, len(set(top1.tolist())), True)


def apply_backend(module: nn.Module, spec: ModelSpec, backend: str) -> nn.Module:
    """`module` (built from `spec`, eval mode) run through `backend`; eager returns it unchanged."""
    if backend not in BACKENDS:
        raise ValueError(f"model {spec.name!r}: unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "eager":
        return module
    if spec.task != Task.CLASSIFICATION:
        raise ValueError(
            f"model {spec.name!r} ({spec.task.value}): backend {backend!r} supports classification models only;"
            " use 'eager'"
        )
    if backend == "channels_last":
        return ChannelsLast(module.to(memory_format=torch.channels_last)).eval()
    if backend == "onnx":
        return onnx_module(module, spec)
    return int8_module(module, spec)
