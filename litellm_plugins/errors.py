"""Exceptions as LiteLLM users catch them."""

from __future__ import annotations

from litellm.exceptions import BudgetExceededError as LiteLLMBudgetExceededError
from thrifty.budget import BudgetExceeded


class BudgetExceededError(BudgetExceeded, LiteLLMBudgetExceededError):
    """thrifty refused a call over a budget: both :class:`thrifty.BudgetExceeded` (scope, limit,
    spent, reserved, cost, policy) and LiteLLM's ``BudgetExceededError``, so that LiteLLM's Router
    does not retry it and its proxy answers HTTP 422 with thrifty's message."""

    def __init__(self, refused: BudgetExceeded) -> None:
        kind, _, owner = refused.scope.partition(" ")
        LiteLLMBudgetExceededError.__init__(self, refused.spent + refused.reserved, refused.limit,
                                            message=str(refused), entity_type=kind, entity_id=owner.strip("'"))
        for name in ("scope", "limit", "spent", "reserved", "cost", "policy"):
            setattr(self, name, getattr(refused, name))

    def __str__(self) -> str:
        return str(self.message)


class CallAbandoned(RuntimeError):
    """A leader's call was cancelled, or its stream dropped before the end: its followers retry."""
