"""The one way to plaintext: the runtime, holding a machine's credential, unseals the secret
values of the release that machine is starting with. Nothing else returns a value."""

from __future__ import annotations

import json

from aerodrome.access import decide, record_denial
from aerodrome.platform import apps as app_rules
from aerodrome.platform import secrets as secret_rules
from aerodrome.secrets.values import SecretValue
from aerodrome.services import Services
from aerodrome.store.db import Audit
from aerodrome.store.models import Machine, Org
from aerodrome.tokens.verify import Decision


def unseal_for_machine(
    services: Services,
    credential: str,
    app_ref: str,
    release_number: int,
    machine_id: str,
    *,
    request_id: str = "",
) -> dict[str, SecretValue]:
    """The values of the secret versions release `release_number` of `app_ref` carries.

    `credential` must be a machine token for this app and machine (action `secrets.unseal`),
    and the machine must be on record running that release; anything else is refused and
    audited. Every unseal is audited with names and versions."""
    services.refresh_revocations()
    verified = services.verifier.verify(credential)
    if isinstance(verified, Decision):
        raise record_denial(services, Audit("anonymous", request_id), verified, "secrets.unseal")
    audit = Audit(verified.token_id, request_id)
    refusal: Decision | None = None
    with services.store.read() as session:
        app = app_rules.get_app(session, app_ref)
        org = session.get(Org, app.org_id)
        if verified.kind != "machine":
            refusal = Decision(
                False,
                "action_not_allowed",
                f"a {verified.kind} token cannot unseal secrets: only a machine credential can",
                "secrets are write-only; the runtime injects them into machines",
            )
        else:
            decision = decide(
                services,
                session,
                verified,
                None,
                "secrets.unseal",
                org,
                app,
                machine_id=machine_id,
            )
            refusal = None if decision.allowed else decision
            recorded = session.get(Machine, machine_id)
            if refusal is None and (recorded is None or recorded.app_id != app.id):
                # Fail closed: a credential outliving its machine's record (a removed
                # machine, a crashed agent's leftovers) unseals nothing.
                refusal = Decision(
                    False,
                    "unknown_machine",
                    f"machine {machine_id} is not on record for app {app.name}",
                    "only a machine the runtime started can unseal its release's secrets",
                )
            elif refusal is None and recorded.release != release_number:
                # A machine unseals the release it runs, no other: its credential cannot
                # reach values rotated out of older releases.
                refusal = Decision(
                    False,
                    "wrong_release",
                    f"machine {machine_id} runs release {recorded.release}, not {release_number}",
                    "a machine unseals only the secrets of its own release",
                )
        if refusal is None:
            release = secret_rules.get_release(session, app, release_number)
            values = secret_rules.unseal_release(session, services.keyring(session), app, release)
            carried = json.loads(release.secret_versions)
    if refusal is not None:
        # Recorded after the read transaction ends: SQLite has one writer at a time.
        raise record_denial(services, audit, refusal, "secrets.unseal", org, app)
    with services.store.write(audit) as tx:
        tx.audit(
            "secrets.unseal",
            app.id,
            org_id=app.org_id,
            detail={"machine": machine_id, "release": release_number, "secrets": carried},
        )
    return values
