"""Integration tests share the session's Serve app (fixtures `cluster`, `base_url`, `client` in tests/conftest.py)."""

from tests.serve_cluster import CORE_MODELS, DEFAULT_CONFIG, MAIN_APP, ServeCluster, default_app_config, free_port

__all__ = ["CORE_MODELS", "DEFAULT_CONFIG", "MAIN_APP", "ServeCluster", "default_app_config", "free_port"]
