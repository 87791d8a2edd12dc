"""Certificates from an ACME CA (RFC 8555) with certbot's `acme` package.

The account key is an ECDSA P-256 key created once per directory URL and kept sealed in
`acme_accounts`. For each order the issuer picks a challenge type (TLS-ALPN-01 first, by
default; a retry moves on to the next type), publishes the challenges to the store for the
edge to answer (`aerodrome.certs.challenges`), gives the edge a moment to follow the change
feed, tells the CA to validate, waits for the order, and withdraws the challenges whatever
happened. Errors become `IssueError`s with a reason fit to show the app's owner.

`acme` 5.x has no TLS-ALPN-01 class: such a challenge arrives as `UnrecognizedChallenge`; its
key authorization is computed here and the RFC 8737 certificate is built in
`challenges.tls_alpn_certificate`.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import requests
from acme import challenges as acme_challenges
from acme import client as acme_client
from acme import crypto_util, messages
from acme import errors as acme_errors
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from josepy import b64, jwa
from josepy.jwk import JWK, JWKEC
from sqlalchemy import select

from aerodrome.certs.challenges import (
    HTTP01,
    TLSALPN01,
    PendingChallenge,
    publish_challenges,
    tls_alpn_certificate,
    withdraw_challenges,
)
from aerodrome.certs.config import CertsSettings
from aerodrome.certs.issued import CertRequest, Issued, IssueError, new_leaf_key, private_pem
from aerodrome.certs.store import account_key_context
from aerodrome.ids import new_id
from aerodrome.secrets.seal import Sealed, seal, unseal
from aerodrome.store.models import AcmeAccount

if TYPE_CHECKING:
    from aerodrome.services import Services

log = logging.getLogger("aerodrome.certs.acme")
USER_AGENT = "aerodrome-certs"


class _TLSALPN01Response(acme_challenges.ChallengeResponse):
    """The (empty) answer to a TLS-ALPN-01 challenge: `{}`."""

    typ = TLSALPN01

    def __bool__(self) -> bool:
        # `ClientNetwork` sends an empty body (a POST-as-GET, which answers nothing) for a
        # falsy object, and an object without fields has length 0.
        return True


@dataclass
class _Session:
    client: acme_client.ClientV2
    jwk: JWKEC


def key_authorization(token: str, jwk: JWK) -> str:
    """RFC 8555 section 8.1: token '.' base64url(SHA-256 JWK thumbprint)."""
    thumbprint = jwk.thumbprint(hash_function=hashes.SHA256)
    return f"{token}.{b64.b64encode(thumbprint).decode('ascii')}"


class AcmeIssuer:
    name = "acme"

    def __init__(
        self,
        services: Services,
        settings: CertsSettings,
        *,
        propagation_delay: float = 1.5,
        timeout: float = 90.0,
    ) -> None:
        if not settings.acme_directory:
            raise ValueError("no ACME directory configured")
        self.services = services
        self.settings = settings
        self.propagation_delay = propagation_delay
        self.timeout = timeout
        self._session: _Session | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"AcmeIssuer({self.settings.acme_directory!r})"

    # -- the account -------------------------------------------------------------------------

    def _account(self) -> tuple[AcmeAccount, ec.EllipticCurvePrivateKey]:
        """This directory's account row and key, created (sealed) on first use."""
        url = self.settings.acme_directory
        with self.services.store.write() as tx:
            keyring = self.services.keyring(tx.session)
            row = tx.session.execute(
                select(AcmeAccount).where(AcmeAccount.directory_url == url)
            ).scalar_one_or_none()
            if row is not None:
                pem = unseal(
                    keyring, account_key_context(row), Sealed(row.key_ciphertext, row.key_wrapped)
                )
                key = serialization.load_pem_private_key(pem.reveal(), password=None)
                assert isinstance(key, ec.EllipticCurvePrivateKey)
                return row, key
            key = ec.generate_private_key(ec.SECP256R1())
            row = AcmeAccount(
                id=new_id("acc"),
                directory_url=url,
                email=self.settings.acme_email,
                uri="",
                key_ciphertext="",
                key_wrapped="",
            )
            sealed = seal(keyring, account_key_context(row), private_pem(key))
            row.key_ciphertext, row.key_wrapped = sealed.ciphertext, sealed.wrapped_key
            tx.session.add(row)
            tx.session.flush()
            tx.changed("acme_account", row.id, "create")
            tx.audit("certs.acme_account.create", row.id, detail={"directory": url})
            return row, key

    def _connect(self) -> _Session:
        if self._session is not None:
            return self._session
        row, key = self._account()
        jwk = JWKEC(key=key)
        verify: Any = self.settings.acme_ca_bundle or True
        net = acme_client.ClientNetwork(
            jwk, alg=jwa.ES256, verify_ssl=verify, user_agent=USER_AGENT
        )
        directory = acme_client.ClientV2.get_directory(self.settings.acme_directory, net)
        client = acme_client.ClientV2(directory, net)
        registration = messages.NewRegistration.from_data(
            email=self.settings.acme_email or None, terms_of_service_agreed=True
        )
        try:
            uri = client.new_account(registration).uri
        except acme_errors.ConflictError as existing:  # this key already has an account
            uri = existing.location
            net.account = messages.RegistrationResource(uri=uri, body=messages.Registration())
        if uri and uri != row.uri:
            with self.services.store.write() as tx:
                stored = tx.session.get(AcmeAccount, row.id)
                if stored is not None:
                    stored.uri = uri
                    tx.changed("acme_account", row.id, "register")
                    tx.audit(
                        "certs.acme_account.register",
                        row.id,
                        detail={"directory": self.settings.acme_directory, "account": uri},
                    )
        self._session = _Session(client, jwk)
        return self._session

    # -- issuing -----------------------------------------------------------------------------

    def challenge_type(self, attempts: int) -> str:
        types = self.settings.challenges
        return types[attempts % len(types)]

    def issue(self, request: CertRequest) -> Issued:
        with self._lock:
            try:
                return self._issue(request)
            except IssueError:
                raise
            except acme_errors.ValidationError as error:
                raise IssueError(_validation_reason(error)) from None
            except acme_errors.TimeoutError:
                raise IssueError(
                    f"the ACME server did not finish the order within {self.timeout:.0f} s"
                ) from None
            except acme_errors.IssuanceError as error:
                raise IssueError(
                    f"the ACME server refused to issue: {_problem(error.error)}"
                ) from None
            except messages.Error as error:
                raise IssueError(f"the ACME server refused: {_problem(error)}") from None
            except requests.RequestException as error:
                self._session = None
                raise IssueError(
                    f"cannot reach the ACME server at {self.settings.acme_directory}: "
                    f"{type(error).__name__}"
                ) from None
            except acme_errors.Error as error:
                self._session = None
                raise IssueError(
                    f"ACME client error: {type(error).__name__}: {error}"[:300]
                ) from None

    def _issue(self, request: CertRequest) -> Issued:
        session = self._connect()
        hostname = request.hostname
        _key, key_pem = new_leaf_key()
        csr = crypto_util.make_csr(key_pem.reveal(), [hostname])
        order = session.client.new_order(csr)
        wanted = self.challenge_type(request.attempts)
        pending: list[PendingChallenge] = []
        answers: list[tuple[messages.ChallengeBody, acme_challenges.ChallengeResponse]] = []
        for authz in order.authorizations:
            if authz.body.status == messages.STATUS_VALID:
                continue  # validated recently for this account: nothing to prove
            challb = self._pick(authz, wanted)
            body = challb.to_json()
            kind, token = body["type"], body["token"]
            auth = key_authorization(token, session.jwk)
            name = authz.body.identifier.value
            if kind == HTTP01:
                pending.append(PendingChallenge(request.certificate_id, name, kind, token, auth))
                answers.append((challb, challb.chall.response(session.jwk)))
            else:
                cert, key = tls_alpn_certificate(name, auth)
                pending.append(
                    PendingChallenge(request.certificate_id, name, kind, token, auth, cert, key)
                )
                answers.append((challb, _TLSALPN01Response()))
        ids: list[str] = []
        if pending:
            with self.services.store.write() as tx:
                keyring = self.services.keyring(tx.session)
                ids = publish_challenges(tx, keyring, pending)
        try:
            if pending:
                time.sleep(self.propagation_delay)  # the edge follows the feed
            for challb, response in answers:
                session.client.answer_challenge(challb, response)
            # `acme` compares deadlines with naive local time.
            deadline = dt.datetime.now() + dt.timedelta(seconds=self.timeout)
            order = session.client.poll_and_finalize(order, deadline=deadline)
        finally:
            if ids:
                with self.services.store.write() as tx:
                    withdraw_challenges(tx, ids)
        if not order.fullchain_pem:
            raise IssueError("the ACME server returned no certificate")
        return Issued.from_chain(order.fullchain_pem.encode("ascii"), key_pem, self.name)

    def _pick(self, authz: messages.AuthorizationResource, wanted: str) -> messages.ChallengeBody:
        offered = {c.to_json().get("type"): c for c in authz.body.challenges}
        for kind in (wanted, *self.settings.challenges):
            if kind in offered:
                return offered[kind]
        raise IssueError(
            f"the ACME server offers no challenge this platform answers for "
            f"{authz.body.identifier.value} (offered: {', '.join(sorted(map(str, offered)))})"
        )


def _problem(error: messages.Error) -> str:
    detail = error.detail or error.description or ""
    code = error.code or "error"
    return f"{detail} ({code})" if detail else code


def _validation_reason(error: acme_errors.ValidationError) -> str:
    reasons = []
    for authz in error.failed_authzrs:
        name = authz.body.identifier.value
        for challb in authz.body.challenges:
            if challb.error is not None:
                kind = challb.to_json().get("type", "challenge")
                reasons.append(f"{kind} validation of {name} failed: {_problem(challb.error)}")
    return "; ".join(reasons) or "the ACME server could not validate the hostname"
