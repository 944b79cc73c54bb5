"""The answers the model families build are exactly what the API's response schemas (and so the
OpenAPI document) say: every bundled model, answering real inputs in-process, checked against its
route's response model with no field missing, none unknown and every type right."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from contract import answers
from contract.params import PARAMS_BY_TASK, ExplainParams
from deployments.args import ArtifactsArgs, LimitsArgs, ModelArgs
from deployments.image_model import ImageModel
from models.training.samples import write_samples

Replica = ImageModel

PREDICTION_OF_TASK: dict[str, type[BaseModel]] = {
    "classification": answers.ClassificationPrediction,
    "video_classification": answers.ClassificationPrediction,
    "detection": answers.DetectionPrediction,
    "segmentation": answers.SegmentationPrediction,
    "denoising": answers.DenoisingPrediction,
}


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("samples")
    write_samples(directory)
    return directory


def conforms(value: Any, model: type[BaseModel]) -> None:
    """`value` validates as `model`, and every nested object has exactly the model's fields
    (required ones present, no others): a key the schema does not document fails."""
    model.model_validate(value)
    assert isinstance(value, dict), value
    unknown = set(value) - set(model.model_fields)
    assert not unknown, f"{model.__name__}: fields not in the schema: {unknown}"
    missing = {n for n, f in model.model_fields.items() if f.is_required()} - set(value)
    assert not missing, f"{model.__name__}: missing {missing}"
    for name, field in model.model_fields.items():
        inner = field.annotation
        items = value.get(name)
        args = getattr(inner, "__args__", ())
        nested = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        if isinstance(items, list) and len(nested) == 1:
            for item in items:
                conforms(item, nested[0])
        elif isinstance(items, dict) and isinstance(inner, type) and issubclass(inner, BaseModel):
            conforms(items, inner)


def sent(answer: Any, model: type[BaseModel]) -> dict[str, Any]:
    """The replica's answer, which must be the route's response model, as the route sends it."""
    assert type(answer) is model, type(answer)
    body: dict[str, Any] = json.loads(answer.model_dump_json(exclude_none=True))
    return body


@pytest.mark.parametrize(
    ("model", "sample", "params"),
    [
        ("digits_cnn", "digit.png", {"top_k": 3}),
        ("digits_detector", "scene.png", {"score_threshold": 0.1}),
        ("digits_segmenter", "scene.png", {}),
        ("digits_denoiser", "noisy.png", {"return_latent": True}),
        ("digits_denoiser", "noisy.png", {}),
        # A 256x256 RGB residual net over the whole scene: seconds, so `make test` only.
        pytest.param("photo_denoiser", "scene.png", {}, marks=pytest.mark.slow),
        ("moving_digits_lstm", "clip.mp4", {"top_k": 2}),
    ],
)
def test_predict_answers_are_what_the_schema_says(
    samples: Path, model: str, sample: str, params: dict[str, Any]
) -> None:
    replica = Replica(ModelArgs(name=model), LimitsArgs(), ArtifactsArgs())
    data = (samples / sample).read_bytes()
    task = replica._spec.task.value
    validated = PARAMS_BY_TASK[task].model_validate(params)  # as the API validates them
    if model == "moving_digits_lstm":
        coroutine = replica.predict_clips([data], validated)
    else:
        coroutine = replica.predict([data], validated)
    result = asyncio.run(coroutine)
    answer = sent(result, answers.PredictResponse)
    # The task's own prediction class: the union in the envelope would take any task's.
    assert {type(p) for p in result.predictions} == {PREDICTION_OF_TASK[task]}
    envelope = {k: v for k, v in answer.items() if k != "predictions"}
    conforms(envelope | {"predictions": []}, answers.PredictResponse)
    for prediction in answer["predictions"]:
        conforms(prediction, PREDICTION_OF_TASK[task])


def test_generate_and_explain_answers_are_what_the_schema_says(samples: Path) -> None:
    generator = Replica(ModelArgs(name="digits_dcgan"), LimitsArgs(), ArtifactsArgs())
    generated = sent(asyncio.run(generator.generate(1, 7, {"label": 3})), answers.GenerateResponse)
    conforms(generated, answers.GenerateResponse)
    classifier = Replica(ModelArgs(name="digits_cnn"), LimitsArgs(), ArtifactsArgs())
    digit = (samples / "digit.png").read_bytes()
    explained = sent(asyncio.run(classifier.explain([digit], ExplainParams(alpha=0.5))), answers.ExplainResponse)
    conforms(explained, answers.ExplainResponse)
