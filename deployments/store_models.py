"""StoreModels: every trained version of the model store, served by one deployment.

A version is loaded on a replica the first time a request for it arrives there, after its signed
manifest is verified with the deployment key, and is then an ImageModel like any configured model
(the same decoding, limits, batching and answers). Serve's model multiplexing keeps each replica's
`max_loaded_versions` most recently used versions and routes a version's requests to the replicas
that hold it, so a canary and its stable version are both warm without a deployment per version.

A trained model listed in `training.one_hop` also gets an application of its own
(deployments.topology), whose replica, TrainedModel, is a StoreModels that answers the
model's `:predict` over HTTP itself: the stable version runs in it, called in-process, and only a
canary's share is passed on, over a handle, to the catalogue's StoreModels. So the stable share
reaches its model in one hop, as a configured model's requests do, and the canary pays one more."""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import Any

from pydantic import BaseModel
from ray import serve

from contract.answers import ExplainResponse, PredictResponse
from contract.params import ExplainParams
from deployments.args import ArtifactsArgs, AuthArgs, LimitsArgs, ModelArgs, TrainingArgs
from deployments.errors import ModelNotFound, Unavailable
from deployments.gateway import Gateway, LocalHandle
from deployments.image_model import ImageModel
from deployments.rest.app import create_model_app
from deployments.rollouts import RolloutCache, model_id
from deployments.schemas import ModelCard
from deployments.signing import deployment_public_keys
from deployments.store import Store
from models import manifest
from models.trained import trained_spec
from models.weights import WeightsError

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
        self._loads: list[str] = []

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

        try:
            model = await asyncio.to_thread(load)
        except WeightsError:
            # Refused by its signature, its pin or its key (models/weights.py says which): the
            # replica's log has why; the caller learns that the version cannot be served now.
            logger.exception("%s: not loaded", key)
            raise Unavailable(f"model {name!r} version {version!r} cannot be loaded; see the server's log") from None
        self._loads.append(key)
        return model

    def loads(self) -> list[str]:
        """The versions this replica has loaded, in order (`name@version`; again after an eviction)."""
        return list(self._loads)

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


class _Version:
    """One loaded version's methods, called in this replica (through LocalHandle)."""

    def __init__(self, replica: StoreModels, key: str) -> None:
        self._replica, self._key = replica, key

    def __getattr__(self, method: str) -> Any:
        async def call(*args: Any) -> Any:
            model = await self._replica._version(self._key)
            result = getattr(model, method)(*args)
            return await result if inspect.isawaitable(result) else result

        return call


class _StableHere:
    """What the gateway of a trained model's own replica takes for the StoreModels handle: the
    stable version's calls run here, in-process; any other version's go on to `remote`."""

    def __init__(self, replica: StoreModels, name: str, remote: Any) -> None:
        self._replica, self._name, self._remote = replica, name, remote
        # The gateway's own (TrainedModel sets it): one read of the rollout per request, not two.
        self.rollouts: RolloutCache | None = None

    def options(self, *, multiplexed_model_id: str) -> Any:
        rollout = None if self.rollouts is None else self.rollouts.get(self._name)
        if (
            rollout is not None
            and rollout.stable is not None
            and multiplexed_model_id == model_id(self._name, rollout.stable)
        ):
            return LocalHandle(_Version(self._replica, multiplexed_model_id))
        return self._remote.options(multiplexed_model_id=multiplexed_model_id)


class TrainedModel(StoreModels):
    """One trained model's own application (training.one_hop): the HTTP ingress of its `:predict`."""

    def __init__(self, training: TrainingArgs, limits: LimitsArgs, auth: AuthArgs, application: str) -> None:
        super().__init__(training, limits)
        (self._name,) = training.one_hop
        self._training, self._auth = training, auth
        # The catalogue application: its StoreModels serves the other versions, its RateLimiter
        # counts this model's requests with the rest of the tenant's.
        self._application = application

    def __serve_build_asgi_app__(self) -> Any:
        """The catalogue's `:predict` route over a gateway whose only model is this trained one."""
        limiter = None
        if self._auth.enabled:
            limiter = serve.get_deployment_handle("RateLimiter", app_name=self._application)
        here = _StableHere(self, self._name, serve.get_deployment_handle("StoreModels", app_name=self._application))
        gateway = Gateway({}, {}, self._limits, self._auth, limiter, self._training, here)
        if gateway.trained is not None:
            here.rollouts = gateway.trained.rollouts
        return create_model_app(gateway, "predict", model=self._name)


StoreModelsDeployment = serve.deployment(StoreModels)
TrainedModelIngress = serve.deployment(serve.ingress()(TrainedModel))
