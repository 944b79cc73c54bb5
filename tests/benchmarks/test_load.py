"""benchmarks.load's open-loop client against a real local HTTP server."""

from __future__ import annotations

import asyncio
import gc
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from benchmarks import load


class _Ok(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/predict"
    finally:
        server.shutdown()
        server.server_close()


def test_open_loop_collections_skip_the_heap_alive_before_it(url: str) -> None:
    """A full collection during the run must not walk the benchmark's heap (torch and all before it):
    each one seen during the run finds that heap frozen, and it is unfrozen afterwards."""
    heap = [[i] for i in range(200_000)]  # the objects a benchmark process holds before its load
    frozen_at_collections: list[int] = []

    def seen(phase: str, _: dict[str, int]) -> None:
        # Only the client's own passes: those while its event loop runs (not the percentiles after).
        if phase == "start" and asyncio._get_running_loop() is not None:
            frozen_at_collections.append(gc.get_freeze_count())

    gc.callbacks.append(seen)
    try:
        run = load.open_loop(url, b"x" * 1000, "image/jpeg", rate=200.0, seconds=1.0)
    finally:
        gc.callbacks.remove(seen)
    assert run["ok"] == 200
    assert run["errors"] == 0
    assert frozen_at_collections  # 200 requests' objects: the client runs several passes
    assert min(frozen_at_collections) >= len(heap)
    assert gc.get_freeze_count() == 0
