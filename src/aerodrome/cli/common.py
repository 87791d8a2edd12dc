"""State shared by all commands: the access token given on the command line."""

from __future__ import annotations

from aerodrome.cli.client import Client


class _State:
    access_token: str | None = None


state = _State()


def client() -> Client:
    return Client(token=state.access_token)
