"""vision-maas client: call the served image models from Python, sync or async."""

from maas.client import ApiError, AsyncVisionClient, GeneratedPng, RetryPolicy, VisionClient

__all__ = ["ApiError", "AsyncVisionClient", "GeneratedPng", "RetryPolicy", "VisionClient"]
