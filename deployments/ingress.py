"""The HTTP ingress as a Serve deployment: the gateway, with the app of deployments.rest built
over it in each replica. No torch here."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.args import AuthArgs, LimitsArgs
from deployments.gateway import Gateway
from deployments.rest.app import create_app
from deployments.schemas import ModelCard


@serve.deployment  # options: deployments.app.INGRESS_OPTIONS
@serve.ingress()
class Ingress(Gateway):
    """Parses and limits requests, then calls the model deployment named in the URL."""

    def __init__(
        self,
        models: Mapping[str, DeploymentHandle[Any] | str],
        cards: dict[str, ModelCard],
        limits: LimitsArgs,
        auth: AuthArgs,
        limiter: DeploymentHandle[Any] | None,
    ) -> None:
        # A model is a deployment of this application (its handle), or the name of the model's own
        # application (deployments.topology), whose deployment has the model's name.
        handles = {
            name: serve.get_deployment_handle(name, app_name=model) if isinstance(model, str) else model
            for name, model in models.items()
        }
        super().__init__(handles, cards, limits, auth, limiter)

    def __serve_build_asgi_app__(self) -> FastAPI:
        # Built in the replica, over this replica's gateway: the routes are plain functions
        # that close over it (no class-based views, nothing frozen by cloudpickle).
        return create_app(self)
