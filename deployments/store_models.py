"""StoreModels: every trained version of the model store, served by one deployment.

A version is loaded on a replica the first time a request for it arrives there, after its signed
manifest is verified with the deployment key, and is then an ImageModel like any configured model
(the same decoding, limits, batching and answers). Serve's model multiplexing keeps each replica's
`max_loaded_versions` most recently used versions and routes a version's requests to the replicas
that hold it, so a canary and its stable version are both warm without a deployment per version."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from pydantic import BaseModel
from ray import serve

from contract.answers import ExplainResponse, PredictResponse
from contract.params import ExplainParams
from deployments.args import ArtifactsArgs, LimitsArgs, ModelArgs, TrainingArgs
from deployments.errors import ModelNotFound
from deployments.image_model import ImageModel
from deployments.schemas import ModelCard
from deployments.signing import deployment_public_keys
from deployments.store import Store
from models import manifest
from models.trained import trained_spec

logger = logging.getLogger("ray.serve")


class StoreModels:
    """Trained versions by their multiplexed id, `name@version` (deployments.rollouts.model_id)."""

    def __init__(self, training: TrainingArgs, limits: LimitsArgs) -> None:
        self._store = Store.at(training.store)
        self._limits = limits
        self._keys = deployment_public_keys(training, self._store)

        # Set up here, not as a decorator: the number of versions a replica keeps is configured.
        # A plain function, not the bound method: Serve keeps its model cache as an attribute of it.
        async def load(key: str) -> ImageModel:
            return await self._load(key)

        self._version = serve.multiplexed(max_num_models_per_replica=training.max_loaded_versions)(load)

    async def _load(self, key: str) -> ImageModel:
        name, _, version = key.partition("@")
        directory = self._store.version(name, version)
        if not (directory / "version.json").is_file():
            raise ModelNotFound(f"model {name!r} has no version {version!r}")

        def load() -> ImageModel:
            # Before any byte of the weights is read: a changed, added or unsigned file is refused.
            listed = manifest.verify_directory(directory, self._keys, require_signature=True)
            logger.info("%s: %d files verified against the deployment key's manifest", key, len(listed))
            spec = trained_spec(directory, name, version)
            return ImageModel(ModelArgs(name=name), self._limits, ArtifactsArgs(), spec=spec)

        return await asyncio.to_thread(load)

    async def _model(self) -> ImageModel:
        model: ImageModel = await self._version(serve.get_multiplexed_model_id())
        return model

    async def card(self) -> ModelCard:
        """The version's card, for the catalogue's gateway (loading the version here if needed)."""
        return (await self._model()).card()

    async def predict(self, images: list[Any], params: BaseModel) -> PredictResponse:
        return await (await self._model()).predict(images, params)

    async def predict_decoded(self, image: Any, params: BaseModel) -> PredictResponse:
        return await (await self._model()).predict_decoded(image, params)

    async def explain(self, images: list[bytes], params: ExplainParams) -> ExplainResponse:
        return await (await self._model()).explain(images, params)

    async def infer(self, inputs: dict[str, Any]) -> Any:
        return await (await self._model()).infer(inputs)

    async def metadata(self) -> dict[str, Any]:
        return (await self._model()).metadata()

    async def ready(self) -> bool:
        return (await self._model()).ready()


StoreModelsDeployment = serve.deployment(StoreModels)
