"""shmlog.kafka — Kafka's wire protocol on loopback, in front of a shmlog instance.

This module is the facade: `serve(log, host, port, ...)` (a coroutine a
supervisor runs in its own thread's event loop), `start(...)` (a Listener
running in a background thread) and `main(argv)` (`shmlog kafka-listener`).
It owns nothing else; server.py, handlers.py, coordinator.py, data.py and
codec.py hold the listener.
"""

from .cli import main, serve, start
from .server import Listener

__all__ = ["main", "serve", "start", "Listener"]
