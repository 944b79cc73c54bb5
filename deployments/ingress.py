"""The HTTP ingress as a Serve deployment: the gateway, with the app of deployments.rest built
over it in each replica. No torch here."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.gateway import Gateway
from deployments.rest.app import create_app


@serve.deployment  # options: deployments.app.INGRESS_OPTIONS
@serve.ingress()
class Ingress(Gateway):
    """Parses and limits requests, then calls the model deployment named in the URL."""

    training: DeploymentHandle[Any] | None = None  # the TrainingJobs deployment, when training is enabled

    def __init__(self, *args: Any, training: DeploymentHandle[Any] | None = None) -> None:
        super().__init__(*args)
        self.training = training

    def __serve_build_asgi_app__(self) -> FastAPI:
        # Built in the replica, over this replica's gateway: the routes are plain functions
        # that close over it (no class-based views, nothing frozen by cloudpickle).
        return create_app(self, training=self.training)
