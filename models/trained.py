"""Trained versions: a registered classifier's backbone with a new head for a data set's classes,
and the ModelSpec that serves one stored version like any other classifier.

A version directory (deployments/store.py places it) holds:

    model.safetensors    the fine-tuned module's state dict (model.safetensors.enc when the store
                         encrypts weights at rest: models/crypto.py, training.encryption_key_id)
    version.json         contract.lifecycle.ModelVersion: base model, categories, report
    MANIFEST.json(.sig)  models/manifest.py: the weights' sha256, signed by the deployment key
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from contract.lifecycle import ModelVersion
from models import manifest
from models.classifiers import classification_outputs, classification_postprocess
from models.registry import ModelSpec, Task, WeightsInfo, get_spec
from models.weights import ENCRYPTED_SUFFIX, WeightsIntegrityError, load_state_dict_file

WEIGHTS_FILE = "model.safetensors"
ENCRYPTED_WEIGHTS_FILE = WEIGHTS_FILE + ENCRYPTED_SUFFIX
VERSION_FILE = "version.json"


class NotAClassifier(ValueError):
    """The base model is not a registered classifier, or has no head to replace."""


def base_classifier(base_model: str) -> ModelSpec:
    """The spec of `base_model` with its default weights, if it is a registered classifier."""
    spec = get_spec(base_model)
    if spec.task != Task.CLASSIFICATION:
        raise NotAClassifier(f"base model {base_model!r} is a {spec.task} model; fine-tuning needs a classifier")
    return spec


def _head_name(module: nn.Module, outputs: int) -> str:
    """The last Linear (or 1x1 convolution, as squeezenet's) that gives the base model's class scores."""
    found: str | None = None
    for name, layer in module.named_modules():
        linear = isinstance(layer, nn.Linear) and layer.out_features == outputs
        pointwise = isinstance(layer, nn.Conv2d) and layer.out_channels == outputs and layer.kernel_size == (1, 1)
        if linear or pointwise:
            found = name
    if found is None:
        raise NotAClassifier(f"no layer of {type(module).__name__} gives its {outputs} class scores")
    return found


def replace_head(module: nn.Module, base_classes: int, num_classes: int) -> str:
    """Swap the layer giving the base model's `base_classes` scores for a fresh one giving
    `num_classes`, in place; returns its qualified name (the parameters a frozen backbone trains)."""
    name = _head_name(module, base_classes)
    parent_name, _, attr = name.rpartition(".")
    parent = module.get_submodule(parent_name) if parent_name else module
    old = module.get_submodule(name)
    new: nn.Module
    if isinstance(old, nn.Linear):
        new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    else:
        assert isinstance(old, nn.Conv2d)
        new = nn.Conv2d(old.in_channels, num_classes, 1, bias=old.bias is not None)
    setattr(parent, attr, new)
    return name


def transfer_model(base: ModelSpec, num_classes: int) -> tuple[nn.Module, str]:
    """The base classifier with its weights, its head replaced for `num_classes`; and the head's name."""
    module = base.build()
    head = replace_head(module, len(base.categories), num_classes)
    return module, head


def logits(output: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The class scores of a forward in training mode: googlenet and inception_v3 also return
    their auxiliary heads' there, after the main one."""
    return output[0] if isinstance(output, tuple) else output


def read_version(version_dir: Path) -> ModelVersion:
    """The ModelVersion record of a stored version."""
    return ModelVersion.model_validate_json((version_dir / VERSION_FILE).read_text())


def weights_file(version_dir: Path) -> tuple[str, str]:
    """The version's weights file, plain or encrypted, and the sha256 its manifest lists for it
    (the signature is the caller's to check). The manifest must list the version's record too: its
    categories and base model are signed as its weights are."""
    listed = manifest.parse_manifest((version_dir / manifest.MANIFEST_NAME).read_bytes(), version_dir)
    if VERSION_FILE not in listed:
        raise WeightsIntegrityError(f"{manifest.MANIFEST_NAME} of a trained version does not list {VERSION_FILE}")
    found = [name for name in (WEIGHTS_FILE, ENCRYPTED_WEIGHTS_FILE) if name in listed]
    if len(found) != 1:
        raise WeightsIntegrityError(
            f"{manifest.MANIFEST_NAME} of a trained version must list one of {WEIGHTS_FILE}, {ENCRYPTED_WEIGHTS_FILE}"
        )
    return found[0], listed[found[0]]


def trained_spec(version_dir: Path, name: str, version: str) -> ModelSpec:
    """The spec serving stored `version` of trained model `name`: the base classifier's input,
    preprocessing and explanation layer, the version's categories and weights (pinned by its manifest)."""
    record = read_version(version_dir)
    filename, sha256 = weights_file(version_dir)
    # A version is named by its plain weights' hash: for an encrypted file (a fresh nonce each
    # time) that is checked once decrypted, in build().
    if record.version != version or (filename == WEIGHTS_FILE and sha256[:12] != version):
        raise WeightsIntegrityError(f"trained version {name}/{version}: its weights are version {sha256[:12]}")
    base = base_classifier(record.base_model)
    categories = tuple(record.categories)
    weights_path = version_dir / filename

    def build() -> nn.Module:
        # The base's own builder gives the exact architecture it was fine-tuned from (builder
        # arguments included); its weights are then replaced whole, strictly.
        module, _ = transfer_model(base, len(categories))
        try:
            state = load_state_dict_file(weights_path, sha256, version if filename != WEIGHTS_FILE else None)
            module.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise WeightsIntegrityError(f"{name}/{version}: weights do not match {record.base_model}: {exc}") from exc
        return module.eval()

    return dataclasses.replace(
        base,
        name=name,
        build=build,
        postprocess=classification_postprocess(categories),
        outputs=classification_outputs(len(categories)),
        categories=categories,
        weights=WeightsInfo("file", f"{name}/{version}/{filename}", sha256, named=version),
        family="trained",
        description=f"fine-tuned from {record.base_model} on data set {record.dataset}",
        held_out=None,  # the base's held-out set has the base's classes; the version's report is its measure
    )
