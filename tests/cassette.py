"""Recorded exchanges with a provider (vcrpy cassettes), shared by the adapters' HTTP tests.

A cassette holds exactly the exchanges a test expects to reach the provider, each playable once:
a call thrifty should have answered that goes out fails the test (vcrpy refuses an unrecorded or
replayed request). Re-record from the live stand-in (thrifty.standin) with
``THRIFTY_RECORD_CASSETTES=1``; see cassettes/README.md.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import vcr
from vcr.cassette import Cassette
from vcr.request import Request

RECORDING = os.environ.get("THRIFTY_RECORD_CASSETTES") == "1"
REPLAY_BASE = "http://standin.invalid/v1"  # nothing listens there: only vcrpy can answer


def _anonymise(request: Request) -> Request:
    request.uri = request.uri.replace(request.uri.split("/v1/")[0], "http://standin.invalid")
    return request


class Provider:
    """Where a test's calls go (``api_base``): a cassette being replayed, or recorded from the
    live stand-in."""

    def __init__(self, cassette: Cassette, api_base: str) -> None:
        self.cassette = cassette
        self.api_base = api_base

    @property
    def played(self) -> int:
        """Exchanges with the provider so far (recorded ones, when recording)."""
        return len(self.cassette) if RECORDING else int(self.cassette.play_count)

    def assert_all_played(self, expected: int) -> None:
        assert len(self.cassette) == expected, f"the cassette holds {len(self.cassette)} exchanges"
        assert self.played == expected and (RECORDING or self.cassette.all_played)


@contextmanager
def recorded(request: pytest.FixtureRequest, folder: Path, provider: type[Provider] = Provider) -> Iterator[Provider]:
    """The cassette ``folder/<test name>.yaml``, replayed (or, when recording, recorded afresh
    from the session's live stand-in)."""
    path = folder / f"{request.node.name}.yaml"
    if RECORDING:
        api_base = request.getfixturevalue("standin").url
        path.unlink(missing_ok=True)
    else:
        api_base = REPLAY_BASE
    recorder = vcr.VCR(record_mode="all" if RECORDING else "none", match_on=["method", "path", "body"],
                       filter_headers=["authorization", "cookie", "set-cookie", "host"],
                       before_record_request=_anonymise, decode_compressed_response=True)
    with recorder.use_cassette(str(path), allow_playback_repeats=False) as cassette:
        yield provider(cassette, api_base)
