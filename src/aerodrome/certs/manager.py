"""`python -m aerodrome.certs.manager`: keeps a valid certificate for every claimed name.

It follows the store (the change-feed revision, every 0.5 s). On a new revision, and at least
every `recheck` seconds, it reconciles the certificate rows with the claims (`APP.DOMAIN`
for every app, `api.DOMAIN`, custom names), then obtains every certificate that is due: new,
past its renewal time (2/3 of its lifetime), or from another issuer than the configured one.
A failure marks the row `failed` with the reason and retries with exponential backoff.

The issuer is the local CA unless `AERO_ACME_DIRECTORY` names an ACME server
(`aerodrome.certs.config`). Nothing is ever issued for a name nothing claims: the claim is
checked once more right before each issuance.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select

from aerodrome.certs import store as cert_store
from aerodrome.certs.config import CertsSettings
from aerodrome.certs.issued import CertRequest, Issued, IssueError, Issuer, utcnow
from aerodrome.certs.local_ca import LocalCA
from aerodrome.config import Settings
from aerodrome.errors import AeroError, NotFound
from aerodrome.services import Services
from aerodrome.store.db import Audit
from aerodrome.store.models import Certificate

log = logging.getLogger("aerodrome.certs.manager")
ACTOR = "certs-manager"


class NotClaimed(NotFound):
    code = "hostname_not_claimed"


def local_ca(services: Services) -> LocalCA:
    return LocalCA(services.settings.ca_dir, services.root_secret)


def make_issuer(services: Services, settings: CertsSettings) -> Issuer:
    if settings.acme_directory:
        from aerodrome.certs.acme_issuer import AcmeIssuer  # imports `acme` only when used

        return AcmeIssuer(services, settings)
    return local_ca(services)


@dataclass
class Outcome:
    hostname: str
    ok: bool
    reason: str = ""


@dataclass
class CertManager:
    services: Services
    issuer: Issuer
    domain: str
    backoff_base: float = 60.0
    backoff_cap: float = 86400.0
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def audit(self) -> Audit:
        return Audit(actor=ACTOR)

    def backoff(self, attempts: int) -> timedelta:
        """Delay before retry number `attempts` (1 = after the first failure)."""
        return timedelta(
            seconds=min(self.backoff_base * 2 ** max(attempts - 1, 0), self.backoff_cap)
        )

    def reconcile(self, now: datetime | None = None) -> cert_store.Reconciled:
        with self.services.store.write(self.audit) as tx:
            result = cert_store.reconcile(tx, self.domain, self.issuer.name, now)
        for hostname in result.created:
            log.info("%s is claimed: certificate pending", hostname)
        for hostname in result.removed:
            log.info("%s is no longer claimed: certificate removed", hostname)
        return result

    def run_once(self, now: datetime | None = None) -> list[Outcome]:
        """One pass: reconcile, then obtain every due certificate. Returns what was tried."""
        self.reconcile(now)
        with self.services.store.read() as session:
            requests = cert_store.due(session, self.issuer.name, now)
        return [self.obtain(request) for request in requests]

    def obtain(self, request: CertRequest) -> Outcome:
        """Issue one certificate and record the result. Refuses names nothing claims."""
        with self.services.store.read() as session:
            claim = cert_store.claim_for(session, request.hostname, self.domain)
            row = session.get(Certificate, request.certificate_id)
        if claim is None or row is None or row.hostname != request.hostname:
            log.warning("refusing to issue for %s: nothing claims it", request.hostname)
            return Outcome(request.hostname, False, "not claimed")
        try:
            issued = self.issuer.issue(request)
        except (IssueError, AeroError) as error:
            reason = error.message if isinstance(error, AeroError) else str(error)
            return self._failed(request, reason)
        except Exception as error:  # a bug or an unexpected library error: keep running
            log.exception("issuing for %s failed unexpectedly", request.hostname)
            return self._failed(request, f"internal error ({type(error).__name__})")
        return self._issued(request, issued)

    def _issued(self, request: CertRequest, issued: Issued) -> Outcome:
        with self.services.store.write(self.audit) as tx:
            keyring = self.services.keyring(tx.session)
            row = cert_store.record_issued(tx, keyring, request, issued)
        if row is None:
            log.info("%s was removed while its certificate was issued: dropped", request.hostname)
            return Outcome(request.hostname, False, "removed")
        log.info(
            "issued %s (%s, serial %s, valid until %s)",
            request.hostname,
            issued.issuer,
            issued.serial,
            issued.not_after.isoformat(),
        )
        outcome = Outcome(request.hostname, True)
        self.outcomes.append(outcome)
        return outcome

    def _failed(self, request: CertRequest, reason: str) -> Outcome:
        delay = self.backoff(request.attempts + 1)
        with self.services.store.write(self.audit) as tx:
            cert_store.record_failure(tx, request, self.issuer.name, reason, utcnow() + delay)
        log.warning(
            "could not issue %s: %s; retrying in %.0f s",
            request.hostname,
            reason,
            delay.total_seconds(),
        )
        outcome = Outcome(request.hostname, False, reason)
        self.outcomes.append(outcome)
        return outcome

    def run(self, stop: threading.Event, poll: float = 0.5, recheck: float = 30.0) -> None:
        """Follow the store until `stop` is set: a pass on every new revision, when a retry
        or renewal falls due, and at least every `recheck` seconds."""
        last_revision = -1
        next_pass = 0.0
        while not stop.is_set():
            try:
                revision = self.services.store.revision()
                if revision != last_revision or time.monotonic() >= next_pass:
                    # Remember the revision seen *before* the pass: a change committed during
                    # it gets a pass of its own (this pass's own writes cost one idle pass).
                    self.run_once()
                    last_revision = revision
                    next_pass = time.monotonic() + recheck
                    with self.services.store.read() as session:
                        soonest = cert_store.next_due_at(session)
                    if soonest is not None:
                        wait = max((soonest - utcnow()).total_seconds(), poll)
                        next_pass = min(next_pass, time.monotonic() + wait)
            except Exception:  # the database may be restarting: log, wait, try again
                log.exception("certificate pass failed")
                next_pass = time.monotonic() + recheck
            stop.wait(poll)


def issue_now(services: Services, hostname: str, issuer: Issuer | None = None) -> Certificate:
    """Synchronously obtain the certificate of one claimed hostname (tests, operators).

    Reconciles first (so `APP.DOMAIN` has its row), refuses a name nothing claims with
    `NotClaimed` and writes nothing then, and raises `IssueError` when issuance fails (the
    failure is recorded on the row as usual)."""
    manager = CertManager(
        services,
        issuer or make_issuer(services, CertsSettings.from_env()),
        services.settings.domain,
    )
    with services.store.read() as session:
        claim = cert_store.claim_for(session, hostname, manager.domain)
    if claim is None:
        raise NotClaimed(
            f"nothing on this platform claims {hostname}",
            hint="certificates are issued only for APP.DOMAIN, api.DOMAIN and names added "
            "with `aero certs add`",
        )
    manager.reconcile()
    with services.store.read() as session:
        row = session.execute(
            select(Certificate).where(Certificate.hostname == hostname)
        ).scalar_one()
        request = CertRequest(row.id, row.hostname, row.attempts)
    outcome = manager.obtain(request)
    if not outcome.ok:
        raise IssueError(outcome.reason)
    with services.store.read() as session:
        result = session.get(Certificate, request.certificate_id)
        assert result is not None
        return result


def main() -> None:
    level = os.environ.get("AERO_LOG_LEVEL", "info").upper()
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = Settings.from_env()
    try:
        certs_settings = CertsSettings.from_env()
    except AeroError as error:
        log.error("%s (%s)", error.message, error.hint)
        raise SystemExit(2) from None
    services = Services.open(settings)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        ca = local_ca(services)
        ca.ensure()  # the root clients trust exists from the first start, whatever the issuer
        issuer = make_issuer(services, certs_settings)
        log.info(
            "certificates for *.%s from the %s issuer%s; local CA root at %s",
            settings.domain,
            issuer.name,
            f" ({certs_settings.acme_directory})" if certs_settings.acme_directory else "",
            ca.root_path,
        )
        CertManager(services, issuer, settings.domain).run(stop)
    except AeroError as error:  # e.g. a local CA made with another root key
        log.error("%s (%s)", error.message, error.hint)
        raise SystemExit(2) from None
    finally:
        services.close()


if __name__ == "__main__":
    main()
