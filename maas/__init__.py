"""vision-maas client: call the served image models from Python, sync or async."""

from maas.client import ApiError, AsyncVisionClient, RetryPolicy, VisionClient

__all__ = ["ApiError", "AsyncVisionClient", "RetryPolicy", "VisionClient"]
