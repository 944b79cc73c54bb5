"""LitServe with dynamic batching and its documented image pattern: JSON `{"image": base64}`.

python -m benchmarks.peers.litserve_server --model resnet18 --port 8102 --max-batch-size 16
"""

# No `from __future__ import annotations`: LitServe hands decode_request's annotation to FastAPI
# as the request body type, and a string annotation would become a query parameter.
import argparse
import base64
from typing import Any

import litserve as ls
import torch

from benchmarks.pipeline import MODELS, Pipeline


class VisionAPI(ls.LitAPI):
    """decode_request decodes one upload; predict runs a batch; encode_response shapes one result."""

    def __init__(self, model: str, threads: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.model_name = model
        self.threads = threads

    def setup(self, device: str) -> None:
        torch.set_num_threads(self.threads)
        self.pipeline = Pipeline(self.model_name, decoder="pil")

    def decode_request(self, request: dict[str, Any]) -> Any:
        return self.pipeline.prepare(base64.b64decode(request["image"]))

    def predict(self, x: Any) -> Any:
        # LitServe hands a list when batching, a single item otherwise.
        items = x if isinstance(x, list) else [x]
        results = self.pipeline.run(items)
        return results if isinstance(x, list) else results[0]

    def encode_response(self, output: Any) -> dict[str, Any]:
        return {"predictions": [output]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=MODELS, default="resnet18")
    parser.add_argument("--port", type=int, default=8102)
    parser.add_argument("--threads", type=int, default=2, help="torch threads per worker")
    parser.add_argument("--workers", type=int, default=1, help="inference worker processes")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--batch-timeout", type=float, default=0.005)
    args = parser.parse_args()
    api = VisionAPI(args.model, args.threads, max_batch_size=args.max_batch_size, batch_timeout=args.batch_timeout)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=args.workers, track_requests=False)
    server.run(host="127.0.0.1", port=args.port, generate_client_file=False, log_level="warning")


if __name__ == "__main__":
    main()
