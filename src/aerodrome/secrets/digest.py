"""Digests shown by `aero secrets list`: keyed per app, so they cannot be used to guess."""

from __future__ import annotations

import hashlib
import hmac

from aerodrome.keyfiles import RootSecret


class Digester:
    def __init__(self, root: RootSecret) -> None:
        self._master = root.derive("secrets/digest/1")

    def __repr__(self) -> str:
        return "Digester(***)"

    def digest(self, app_id: str, value: bytes) -> str:
        """32 hex characters of HMAC-SHA256 under the app's own key."""
        app_key = hmac.new(self._master, app_id.encode(), hashlib.sha256).digest()
        return hmac.new(app_key, value, hashlib.sha256).hexdigest()[:32]
