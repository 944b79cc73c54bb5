"""The peer most teams hand-write: one uvicorn process, FastAPI, PIL in a sync handler.

python -m benchmarks.peers.fastapi_server --model resnet18 --port 8101
"""

from __future__ import annotations

import argparse

import torch
import uvicorn
from fastapi import FastAPI, Request
from starlette.concurrency import run_in_threadpool

from benchmarks.pipeline import MODELS, Pipeline


def build(model: str) -> FastAPI:
    """The app: POST /predict with the image as the body, one forward per request."""
    pipeline = Pipeline(model, decoder="pil")
    app = FastAPI()

    @app.post("/predict")
    async def predict(request: Request) -> dict[str, object]:
        body = await request.body()
        # The usual pattern: the blocking model call in Starlette's thread pool.
        return {"predictions": await run_in_threadpool(pipeline, [body])}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=MODELS, default="resnet18")
    parser.add_argument("--port", type=int, default=8101)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    uvicorn.run(build(args.model), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
