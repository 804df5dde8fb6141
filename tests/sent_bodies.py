"""What LiteLLM sent upstream: a logger of the request bodies, for tests that check exactly what a
provider received through thrifty."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import litellm
import pytest


class Sent(litellm.integrations.custom_logger.CustomLogger):  # type: ignore[misc,name-defined]
    """The request bodies LiteLLM sent upstream, as LiteLLM logged them before each call."""

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[dict[str, Any]] = []

    def log_pre_api_call(self, model: str, messages: Any, kwargs: dict[str, Any]) -> None:
        self.bodies.append(copy.deepcopy((kwargs.get("additional_args") or {}).get("complete_input_dict")))

    def to(self, model: str) -> list[dict[str, Any]]:
        """The bodies sent to ``model`` (named with its provider prefix)."""
        return [b for b in self.bodies if b.get("model") == model.split("/", 1)[1]]


@pytest.fixture
def sent() -> Iterator[Sent]:
    """A :class:`Sent` in ``litellm.callbacks`` for the test."""
    logger = Sent()
    litellm.callbacks.append(logger)
    yield logger
    if logger in litellm.callbacks:
        litellm.callbacks.remove(logger)
