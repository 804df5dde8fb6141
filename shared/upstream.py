"""What a failed upstream call means for the callers who share it.

A leader's *deterministic* failure (a 4xx-like error: the same request would fail the same way)
is every follower's failure: they get it as :class:`UpstreamError` (or the leader's own
exception, within its process), and nobody calls again. Any other failure (a timeout, a rate
limit, a server error, a cancelled call) is the leader's alone: one follower makes the call
itself. A stream that broke off midway is deterministic for its followers
(:class:`StreamFailed`): they asked for that very answer and it was not delivered whole.
"""

from __future__ import annotations


class UpstreamError(RuntimeError):
    """A leader's failure handed to its followers. ``status_code`` is the upstream's, if any;
    ``kind`` the name of the leader's exception class."""

    def __init__(self, message: str, *, status_code: int | None = None, kind: str | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.kind = kind


class StreamFailed(UpstreamError):
    """The leader's streamed answer broke off midway; followers get this, and nothing is cached."""


class LeaderGaveUp(RuntimeError):
    """The leader of a flight ended without an answer to share (its call was never made, it was
    cancelled, or its own bookkeeping failed): each follower makes the call itself."""


def is_deterministic(error: BaseException) -> bool:
    """Whether the same request would fail the same way again: a 4xx-like error (a bad request,
    a context-length or content-policy refusal), not a timeout, a rate limit or a server error."""
    if isinstance(error, StreamFailed):
        return True
    status = getattr(error, "status_code", None)
    if not isinstance(status, int):
        status = getattr(getattr(error, "response", None), "status_code", None)
    return isinstance(status, int) and 400 <= status < 500 and status not in (408, 409, 425, 429)


def followers_error(error: BaseException, *, mid_stream: bool) -> BaseException:
    """The error a leader's followers are given for ``error``: a stream that broke midway becomes
    :class:`StreamFailed`; a cancellation (or any other non-``Exception``) is the leader's own
    business and becomes :class:`LeaderGaveUp`; anything else is handed on as it is."""
    if not isinstance(error, Exception):
        return LeaderGaveUp(f"the leader's call ended with {type(error).__name__}")
    if not mid_stream:
        return error
    return StreamFailed(f"the leader's stream failed midway: {error}",
                        status_code=getattr(error, "status_code", None), kind=type(error).__name__)
