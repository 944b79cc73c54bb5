"""Fine-tuning pieces without Ray: the split, the report, the new head, a published version served
back through trained_spec, the drawn data set, and what a failed job says."""

from __future__ import annotations

import asyncio
import io
import json
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from contract.lifecycle import CurvePoint, Rollout, TrainingJob, TrainingJobRequest
from deployments.store import Store, read_json
from deployments.training import REPORT_FILE, STATE_FILE, failure_message, publish_version
from models import crypto, manifest
from models.registry import Task, get_spec
from models.trained import (
    ENCRYPTED_WEIGHTS_FILE,
    VERSION_FILE,
    WEIGHTS_FILE,
    NotAClassifier,
    base_classifier,
    replace_head,
    trained_spec,
    transfer_model,
)
from models.training import finetune, shapes


def test_split_is_stratified_disjoint_and_whole() -> None:
    labels = [0] * 50 + [1] * 20 + [2] * 5
    train, val = finetune.stratified_split(labels, 0.2, seed=3)
    assert sorted(train + val) == list(range(len(labels)))
    held = Counter(labels[i] for i in val)
    assert held == {0: 10, 1: 4, 2: 1}  # each class in proportion, the smallest still on both sides


def test_split_is_seeded() -> None:
    labels = [i % 4 for i in range(200)]
    assert finetune.stratified_split(labels, 0.25, 7) == finetune.stratified_split(labels, 0.25, 7)
    assert finetune.stratified_split(labels, 0.25, 7) != finetune.stratified_split(labels, 0.25, 8)


def test_a_tiny_fraction_still_holds_out_every_class() -> None:
    labels = [0] * 5 + [1] * 5 + [2] * 5
    _, val = finetune.stratified_split(labels, 0.05, 0)
    assert sorted(labels[i] for i in val) == [0, 1, 2]


def test_report_has_per_class_metrics_macro_averages_and_confusion() -> None:
    truth = [0, 0, 0, 1, 1, 2]
    predicted = [0, 0, 1, 1, 1, 0]
    curve = [CurvePoint(epoch=1, loss=0.5, val_accuracy=0.6)]
    report = finetune.evaluation_report(truth, predicted, ["a", "b", "c"], curve, train_images=20, val_images=6)
    assert report.accuracy == pytest.approx(4 / 6)
    assert report.labels == ["a", "b", "c"]
    assert report.confusion_matrix == [[2, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert report.per_class["a"].precision == pytest.approx(2 / 3)
    assert report.per_class["a"].recall == pytest.approx(2 / 3)
    assert report.per_class["b"].f1 == pytest.approx(0.8)
    assert report.per_class["c"].model_dump() == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert report.macro_recall == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert (report.train_images, report.val_images, report.curve) == (20, 6, curve)


def test_head_is_replaced_and_the_backbone_kept() -> None:
    base = base_classifier("digits_cnn")
    module, head = transfer_model(base, 3)
    assert head == "classifier.5"
    assert module(torch.zeros(2, *base.input_shape)).shape == (2, 3)
    original = base.build().state_dict()
    for name, tensor in module.state_dict().items():
        if not name.startswith(head):
            assert torch.equal(tensor, original[name]), name


@pytest.mark.parametrize(("model", "head"), [("squeezenet1_1", "classifier.1"), ("mobilenet_v3_small", "classifier.3")])
def test_torchvision_heads_are_found(model: str, head: str) -> None:
    module = get_spec(model, "random").build()
    assert replace_head(module, 1000, 5) == head
    assert module.eval()(torch.zeros(1, 3, 64, 64)).shape == (1, 5)


def test_only_classifiers_are_base_models() -> None:
    assert get_spec("digits_detector").task != Task.CLASSIFICATION
    with pytest.raises(NotAClassifier):
        base_classifier("digits_detector")


def test_frozen_backbone_trains_the_head_only() -> None:
    module, head = transfer_model(base_classifier("digits_cnn"), 4)
    finetune.freeze_backbone(module, head)
    trainable = {name for name, p in module.named_parameters() if p.requires_grad}
    assert trainable == {f"{head}.weight", f"{head}.bias"}
    finetune.train_mode(module, head, frozen_backbone=True)
    assert not module.get_submodule("features.1").training  # batch-norm statistics kept
    assert module.get_submodule("classifier.1").training  # dropout on


def test_drawn_shapes_are_the_same_for_a_seed_and_read_back_in_the_layout(tmp_path: Path) -> None:
    pictures = shapes.draw_set(6, seed=1)
    assert pictures == shapes.draw_set(6, seed=1)
    assert shapes.pack_zip(pictures) == shapes.pack_zip(shapes.draw_set(6, seed=1))
    names = zipfile.ZipFile(io.BytesIO(shapes.pack_zip(pictures))).namelist()
    assert sorted(names)[:2] == ["circle/0.png", "circle/1.png"]
    record = shapes.write_dataset(tmp_path, pictures)
    assert record.id == shapes.dataset_id(pictures)
    assert record.classes == dict.fromkeys(shapes.SHAPES, 6)
    data = finetune.read_dataset(tmp_path / record.id)
    assert data.categories == shapes.SHAPES
    assert Counter(data.labels) == dict.fromkeys(range(4), 6)
    base = base_classifier("digits_cnn")
    items = finetune.ImageSet(data, [0, 7], base.image_mode, base.preprocess, torch.Generator().manual_seed(0))
    tensor, label = items[1]
    assert tensor.shape == base.input_shape
    assert label == 1


def test_augmentation_keeps_size_and_mode() -> None:
    img = Image.new("L", (40, 30), 255)
    out = finetune.augment(img, torch.Generator().manual_seed(0))
    assert (out.size, out.mode) == ((40, 30), "L")


def _checkpoint(tmp_path: Path, categories: list[str]) -> tuple[Path, torch.nn.Module]:
    """A last-epoch checkpoint as a training worker writes it."""
    module, _ = transfer_model(base_classifier("digits_cnn"), len(categories))
    directory = tmp_path / "checkpoint"
    directory.mkdir(parents=True)
    torch.save({"model": module.state_dict(), "epoch": 1, "step": 3}, directory / STATE_FILE)
    report = finetune.evaluation_report([0, 1], [0, 1], categories, [], train_images=8, val_images=2)
    (directory / REPORT_FILE).write_text(report.model_dump_json())
    return directory, module.eval()


def test_a_published_version_is_signed_immutable_and_served_by_trained_spec(tmp_path: Path) -> None:
    store = Store.at(str(tmp_path / "store"))
    categories = ["circle", "cross"]
    checkpoint, module = _checkpoint(tmp_path, categories)
    request = TrainingJobRequest(name="shapes", base_model="digits_cnn", dataset="0123456789abcdef")
    job = TrainingJob(id="job1", status="running", request=request, created=0.0)
    private, public = manifest.generate_keypair()

    record = publish_version(store, job, checkpoint, private)
    directory = store.version("shapes", record.version)
    assert sorted(p.name for p in directory.iterdir()) == [
        manifest.MANIFEST_NAME,
        manifest.SIGNATURE_NAME,
        WEIGHTS_FILE,
        VERSION_FILE,
    ]
    listed = manifest.verify_directory(directory, [public], require_signature=True)
    assert sorted(listed) == [WEIGHTS_FILE, VERSION_FILE]  # the record's categories are signed too
    assert record.version == listed[WEIGHTS_FILE][:12]
    assert (record.state, record.percent, record.categories, record.job) == ("inactive", 0, categories, "job1")
    assert Rollout.model_validate(read_json(store.rollout("shapes"))) == Rollout(name="shapes", stable=record.version)

    # The same weights again: the stored version is kept as it is, the rollout untouched.
    before = (directory / VERSION_FILE).read_bytes()
    (store.rollout("shapes")).write_text(json.dumps({"name": "shapes", "stable": None}))
    assert publish_version(store, job, checkpoint, private).version == record.version
    assert (directory / VERSION_FILE).read_bytes() == before
    assert read_json(store.rollout("shapes"))["stable"] is None
    assert [p.name for p in store.versions("shapes").iterdir()] == [record.version]

    spec = trained_spec(directory, "shapes", record.version)
    base = base_classifier("digits_cnn")
    assert (spec.name, spec.task, spec.categories) == ("shapes", Task.CLASSIFICATION, tuple(categories))
    assert (spec.input_size, spec.image_mode, spec.preprocess) == (base.input_size, base.image_mode, base.preprocess)
    assert (spec.weights.source, spec.weights.version) == ("file", record.version)
    x = torch.rand(3, *spec.input_shape)
    served = spec.build()
    assert torch.allclose(served(x), module(x))
    assert spec.outputs[0].shape == (-1, 2)


def test_a_version_encrypted_at_rest_has_the_plain_versions_name_and_serves_only_with_its_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    categories = ["circle", "cross"]
    checkpoint, module = _checkpoint(tmp_path, categories)
    request = TrainingJobRequest(name="shapes", base_model="digits_cnn", dataset="0123456789abcdef")
    job = TrainingJob(id="job1", status="running", request=request, created=0.0)
    private, public = manifest.generate_keypair()
    monkeypatch.setenv(crypto.KEYS_ENV, crypto.format_key("k1", crypto.generate_key()))

    plain = publish_version(Store.at(str(tmp_path / "plain")), job, checkpoint, private)
    store = Store.at(str(tmp_path / "store"))
    record = publish_version(store, job, checkpoint, private, encryption_key_id="k1")
    assert record.version == plain.version  # named by the weights, not by their ciphertext
    directory = store.version("shapes", record.version)
    listed = manifest.verify_directory(directory, [public], require_signature=True)
    assert sorted(listed) == [ENCRYPTED_WEIGHTS_FILE, VERSION_FILE]
    stored = (directory / ENCRYPTED_WEIGHTS_FILE).read_bytes()
    assert stored.startswith(b"VMENC1")
    assert (store.version("shapes", record.version) / WEIGHTS_FILE).exists() is False

    spec = trained_spec(directory, "shapes", record.version)
    assert spec.weights.sha256 == listed[ENCRYPTED_WEIGHTS_FILE]
    assert spec.weights.version == record.version  # what answers name as model_version
    x = torch.rand(2, *spec.input_shape)
    assert torch.allclose(spec.build()(x), module(x))
    # A replica without the key cannot read the version; with another key, neither.
    monkeypatch.delenv(crypto.KEYS_ENV)
    with pytest.raises(manifest.WeightsIntegrityError):
        spec.build()
    monkeypatch.setenv(crypto.KEYS_ENV, crypto.format_key("k1", crypto.generate_key()))
    with pytest.raises(manifest.WeightsIntegrityError):
        spec.build()
    # Another version's weights, encrypted under the right key, in this version's place: refused.
    monkeypatch.setenv(crypto.KEYS_ENV, crypto.format_key("k1", crypto.generate_key()))
    record = publish_version(store, job, checkpoint, private, encryption_key_id="k1")
    other, _ = _checkpoint(tmp_path / "again", categories)
    swapped = publish_version(Store.at(str(tmp_path / "swap")), job, other, private, encryption_key_id="k1")
    assert swapped.version != record.version
    swapped_dir = Store.at(str(tmp_path / "swap")).version("shapes", swapped.version)
    (directory / ENCRYPTED_WEIGHTS_FILE).write_bytes((swapped_dir / ENCRYPTED_WEIGHTS_FILE).read_bytes())
    manifest.write_manifest(directory, also=[VERSION_FILE])  # re-signed as publish_version signs
    manifest.sign_manifest(directory, private)
    with pytest.raises(manifest.WeightsIntegrityError, match="decrypted weights are not"):
        trained_spec(directory, "shapes", record.version).build()
    # An operator's key id the variable lacks: publishing fails, naming no key material.
    with pytest.raises(crypto.KeyConfigError):
        publish_version(Store.at(str(tmp_path / "other")), job, checkpoint, private, encryption_key_id="k9")


def test_a_version_whose_weights_changed_is_refused(tmp_path: Path) -> None:
    store = Store.at(str(tmp_path / "store"))
    checkpoint, _ = _checkpoint(tmp_path, ["a", "b"])
    job = TrainingJob(
        id="j",
        status="running",
        created=0.0,
        request=TrainingJobRequest(name="m", base_model="digits_cnn", dataset="0" * 16),
    )
    record = publish_version(store, job, checkpoint, manifest.generate_keypair()[0])
    directory = store.version("m", record.version)
    with (directory / WEIGHTS_FILE).open("r+b") as out:
        out.seek(-1, 2)
        out.write(b"\x00")
    spec = trained_spec(directory, "m", record.version)
    with pytest.raises(manifest.WeightsIntegrityError):
        spec.build()


def test_a_failed_job_says_what_failed_without_paths() -> None:
    error = FileNotFoundError(2, "No such file or directory", "/srv/store/datasets/x/images/a/1.png")
    message = failure_message(RuntimeError(str(error)))
    assert "/srv" not in message
    assert "1.png" in message
    assert "\n" not in failure_message(ValueError("first line\nTraceback (most recent call last):"))


def test_a_trained_models_own_replica_runs_its_stable_version_here_and_passes_on_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deployments.args import LimitsArgs, TrainingArgs
    from deployments.errors import Unavailable
    from deployments.gateway import LocalHandle
    from deployments.rollouts import RolloutCache
    from deployments.store_models import StoreModels, _StableHere

    private, _ = manifest.generate_keypair()
    key_file = tmp_path / "deploy.pem"
    key_file.write_bytes(private)
    training = TrainingArgs(enabled=True, store=str(tmp_path / "store"), signing_key_file=str(key_file))
    store = Store.at(training.store)
    request = TrainingJobRequest(name="shapes", base_model="digits_cnn", dataset="0123456789abcdef")
    job = TrainingJob(id="job1", status="running", request=request, created=0.0)
    stable = publish_version(store, job, _checkpoint(tmp_path / "a", ["x", "y"])[0], private)
    monkeypatch.setenv(crypto.KEYS_ENV, crypto.format_key("k1", crypto.generate_key()))
    locked = publish_version(store, job, _checkpoint(tmp_path / "b", ["x", "y"])[0], private, encryption_key_id="k1")

    class Remote:
        def options(self, *, multiplexed_model_id: str) -> str:
            return f"remote {multiplexed_model_id}"

    replica = StoreModels(training, LimitsArgs())
    here = _StableHere(replica, "shapes", Remote())
    here.rollouts = RolloutCache(store)  # as the gateway's, which TrainedModel hands it
    assert isinstance(here.options(multiplexed_model_id=f"shapes@{stable.version}"), LocalHandle)
    assert here.options(multiplexed_model_id=f"shapes@{locked.version}") == f"remote shapes@{locked.version}"

    async def load(version: str) -> Any:
        return await replica._load(f"shapes@{version}")

    assert asyncio.run(load(stable.version)).card().name == "shapes"
    assert asyncio.run(load(locked.version)).card().version == locked.version
    # Without its key a version is refused with a 503 that names it, not an internal error.
    monkeypatch.delenv(crypto.KEYS_ENV)
    with pytest.raises(Unavailable, match=f"version '{locked.version}' cannot be loaded"):
        asyncio.run(load(locked.version))
    assert replica.loads() == [f"shapes@{stable.version}", f"shapes@{locked.version}"]
    # A relabelled record (its categories swapped) no longer matches the signed manifest: 503.
    record_file = store.version("shapes", stable.version) / "version.json"
    record_file.write_text(record_file.read_text().replace('"x"', '"z"'))
    with pytest.raises(Unavailable, match=f"version '{stable.version}' cannot be loaded"):
        asyncio.run(load(stable.version))
