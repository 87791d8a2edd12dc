"""How certificates are obtained on this platform, from `AERO_*` environment variables.

- `AERO_ACME_DIRECTORY`: an ACME directory URL. Unset: every certificate comes from the
  local CA. Set: every certificate comes from that ACME server.
- `AERO_ACME_CA_BUNDLE`: a PEM file of CAs to trust for the ACME server's own HTTPS (a test
  server such as Pebble); default: the system's trust store.
- `AERO_ACME_EMAIL`: the account's contact address (optional).
- `AERO_ACME_CHALLENGES`: the challenge types to use, in order of preference, comma
  separated (default `tls-alpn-01,http-01`); a retry moves on to the next type.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from aerodrome.errors import InvalidInput

CHALLENGE_TYPES = ("tls-alpn-01", "http-01")


@dataclass(frozen=True)
class CertsSettings:
    acme_directory: str = ""
    acme_ca_bundle: str = ""
    acme_email: str = ""
    challenges: tuple[str, ...] = CHALLENGE_TYPES

    @property
    def issuer_name(self) -> str:
        return "acme" if self.acme_directory else "local"

    @classmethod
    def from_env(cls) -> CertsSettings:
        wanted = os.environ.get("AERO_ACME_CHALLENGES", "")
        challenges = tuple(c.strip() for c in wanted.split(",") if c.strip()) or CHALLENGE_TYPES
        unknown = [c for c in challenges if c not in CHALLENGE_TYPES]
        if unknown:
            raise InvalidInput(
                f"unknown ACME challenge type {unknown[0]!r} in AERO_ACME_CHALLENGES",
                hint=f"use one or more of: {', '.join(CHALLENGE_TYPES)}",
            )
        return cls(
            acme_directory=os.environ.get("AERO_ACME_DIRECTORY", "").strip(),
            acme_ca_bundle=os.environ.get("AERO_ACME_CA_BUNDLE", "").strip(),
            acme_email=os.environ.get("AERO_ACME_EMAIL", "").strip(),
            challenges=challenges,
        )


def configured_issuer() -> str:
    """`acme` when an ACME directory is configured, else `local`."""
    return "acme" if os.environ.get("AERO_ACME_DIRECTORY", "").strip() else "local"
