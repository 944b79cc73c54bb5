"""Ray Serve's minimal documented pattern: one deployment, PIL in the handler, default settings.

python -m benchmarks.peers.rayserve_minimal --model resnet18 --port 8103
"""

from __future__ import annotations

import argparse
import time

from ray import serve
from starlette.requests import Request

from benchmarks.pipeline import MODELS, Pipeline


@serve.deployment
class Classifier:
    """The handler decodes with PIL and runs one forward per request."""

    def __init__(self, model: str) -> None:
        self.pipeline = Pipeline(model, decoder="pil")

    async def __call__(self, request: Request) -> dict[str, object]:
        return {"predictions": self.pipeline([await request.body()])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=MODELS, default="resnet18")
    parser.add_argument("--port", type=int, default=8103)
    args = parser.parse_args()
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    serve.run(Classifier.bind(args.model), route_prefix="/predict")  # type: ignore[attr-defined]
    while True:  # serve.run returns once deployed; the process keeps Ray (and the app) alive
        time.sleep(3600)


if __name__ == "__main__":
    main()
