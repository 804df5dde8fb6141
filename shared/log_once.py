"""Warnings that are logged once per kind, not once per request.

thrifty is in the path of every LLM call: when one of its parts fails (Redis down, a broken
embedder, an unwritable file) the same failure would otherwise be logged thousands of times a
minute. Each part keeps one :class:`LogOnce` and names the kind of failure.
"""

from __future__ import annotations

import logging
import threading


class LogOnce:
    """Logs a warning the first time each ``kind`` is seen. Thread-safe."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, kind: str, message: str, *args: object) -> bool:
        """Log ``message % args`` unless ``kind`` was logged before; True when it was logged now."""
        with self._lock:
            if kind in self._seen:
                return False
            self._seen.add(kind)
        self.logger.warning(message, *args)
        return True
