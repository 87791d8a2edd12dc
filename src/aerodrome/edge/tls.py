"""TLS for the edge: one hardened context per hostname, chosen by SNI.

TLS 1.2 and 1.3 only, forward-secret AEAD suites only, X25519/P-256/P-384 key exchange,
ECDSA certificates, ALPN `http/1.1`. A hostname without a certificate gets no handshake at
all (no on-demand issuance), and neither does a client that sends no SNI. Keys are loaded
from memory (`memfd`), never written to disk in plaintext.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Mapping
from typing import Any

from aerodrome.certs.sslctx import ACME_TLS_ALPN_PROTOCOL, load_cert_chain, server_context
from aerodrome.edge import openssl, tickets

log = logging.getLogger("aerodrome.edge")

# TLS 1.2 suites: ECDHE key exchange, AEAD ciphers. TLS 1.3 suites are all AEAD already.
TLS12_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-RSA-CHACHA20-POLY1305",
    ]
)

# Key exchange, most preferred first (Mozilla's "intermediate" list). Browsers send an X25519
# key share with their first message: a server that accepts only P-256 answers it with a
# HelloRetryRequest, one more round trip on every new connection.
KEY_EXCHANGE_GROUPS = "X25519:P-256:P-384"


def server_connection(
    context: ssl.SSLContext, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO
) -> Any:
    """The server side of one TLS connection over two memory BIOs, for the edge's own TLS
    layer (`tlsstream`): the `ssl` module's C object itself (`_ssl._SSLSocket`, what an
    `SSLObject` wraps), not an `SSLObject`.

    Every method is then a C call. Through `SSLObject`, creating the connection runs its
    Python constructor, and each `do_handshake` and `unwrap` (here `shutdown`) an interpreter
    frame, with the `SSLWantReadError` every handshake and close raises passing through it:
    per new connection, cold from the handshake, that was a measurable part of the edge's
    Python time. It has the `SSLObject` methods the edge uses (`read`, `write`, `pending`,
    `version`, `cipher`, `selected_alpn_protocol`, `session_reused`, `context`), and the SNI
    callback receives it as its first argument."""
    wrap: Callable[..., Any] = context._wrap_bio  # type: ignore[attr-defined]
    return wrap(incoming, outgoing, server_side=True, server_hostname=None)


def hardened_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= (
        ssl.OP_NO_COMPRESSION
        | ssl.OP_CIPHER_SERVER_PREFERENCE
        | ssl.OP_NO_RENEGOTIATION
        | ssl.OP_SINGLE_ECDH_USE
    )
    if not openssl.set_groups(ctx, KEY_EXCHANGE_GROUPS):
        ctx.set_ecdh_curve("prime256v1")  # one group: clients that lead with X25519 pay an RTT
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


class TlsManager:
    """Holds the per-hostname contexts and answers the SNI callback."""

    def __init__(
        self, default_hostname: str | None = None, ticket_seed: bytes | None = None
    ) -> None:
        self.default_hostname = default_hostname
        self.ticket_seed = ticket_seed
        self.ticket_epoch = -1
        self.default = hardened_context()
        self.default.sni_callback = self._sni
        self._contexts: dict[str, ssl.SSLContext] = {}
        self._challenges: dict[str, ssl.SSLContext] = {}
        self._names: dict[int, str] = {}
        self._loaded: dict[str, tuple[bytes, bytes]] = {}

    def update(
        self,
        certificates: Mapping[str, tuple[bytes, bytes]],
        challenges: Mapping[str, tuple[bytes, bytes]] | None = None,
    ) -> None:
        """Swap in new certificate sets; unchanged hostnames keep their context (and so their
        session tickets)."""
        contexts: dict[str, ssl.SSLContext] = {}
        for hostname, material in certificates.items():
            existing = self._contexts.get(hostname)
            if existing is not None and self._loaded.get(hostname) == material:
                contexts[hostname] = existing
                continue
            ctx = hardened_context()
            try:
                load_cert_chain(ctx, *material)
            except (ssl.SSLError, ValueError) as error:
                # One unusable certificate costs its own hostname, not every route update.
                log.error("certificate of %s not loaded: %s", hostname, type(error).__name__)
                continue
            contexts[hostname] = ctx
        names = {id(ctx): name for name, ctx in contexts.items()}
        alpn: dict[str, ssl.SSLContext] = {}
        for hostname, (cert_pem, key_pem) in (challenges or {}).items():
            try:
                alpn[hostname] = server_context(cert_pem, key_pem, [ACME_TLS_ALPN_PROTOCOL])
            except (ssl.SSLError, ValueError) as error:
                log.error(
                    "challenge certificate of %s not loaded: %s", hostname, type(error).__name__
                )
        self._contexts, self._names, self._challenges = contexts, names, alpn
        self._loaded = dict(certificates)
        self.ticket_epoch = -1
        self.rotate_tickets()

    def rotate_tickets(self) -> None:
        """Give every context this epoch's shared ticket keys (call it now and then)."""
        if self.ticket_seed is None:
            return
        now = tickets.epoch()
        if now == self.ticket_epoch:
            return
        keys = tickets.ticket_keys(self.ticket_seed, now)
        for ctx in (self.default, *self._contexts.values()):
            tickets.install(ctx, keys)
        self.ticket_epoch = now

    def _sni(
        self, sslobj: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext
    ) -> int | None:
        name = (server_name or "").lower()
        ctx = self._challenges.get(name) or self._contexts.get(name)
        if ctx is None and self.default_hostname is not None:
            # An operator-chosen default (like nginx's default server) for clients that send
            # no SNI or an IP address. Off unless configured.
            ctx = self._contexts.get(self.default_hostname)
        if ctx is None:  # no SNI, or a name without a certificate: no handshake
            return ssl.AlertDescription.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        sslobj.context = ctx
        return None

    def hostname_of(self, sslobj: ssl.SSLObject) -> str | None:
        return self._names.get(id(sslobj.context))
