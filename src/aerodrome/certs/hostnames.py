"""Which hostnames may hold a certificate, and which ones the platform itself claims.

A certificate is only ever issued for a name something on the platform claims: `APP.DOMAIN`
for every app, `api.DOMAIN` for the control plane, and custom names an app's owner added
(`aero certs add`). Custom names are checked here before anything is written.
"""

from __future__ import annotations

import ipaddress
import re

from aerodrome.errors import AeroError, Conflict, InvalidInput

MAX_HOSTNAME = 253
_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
CONTROL_PLANE_LABEL = "api"


def _shown(value: str) -> str:
    return value if len(value) <= 80 else f"{value[:80]}…"


def normalize(value: str) -> str:
    """Lower case, without the root's trailing dot."""
    return value.lower().removesuffix(".")


def validate_hostname(value: object) -> str:
    """A DNS name a public certificate can carry: at least two labels of letters, digits and
    dashes, at most 253 characters, no IP address, no wildcard. Returns it normalised."""
    if not isinstance(value, str) or not value:
        raise InvalidInput("a hostname is required", hint="for example www.example.com")
    name = normalize(value)
    if name.startswith("*."):
        raise InvalidInput(
            f"wildcard names are not supported: {_shown(value)!r}",
            hint="a wildcard needs DNS-01 validation; add each name instead",
        )
    if not name.isascii():
        raise InvalidInput(
            f"hostname {_shown(value)!r} is not ASCII",
            hint="give an internationalised name in its xn-- (punycode) form",
        )
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        pass
    else:
        raise InvalidInput(
            f"{_shown(value)!r} is an IP address, not a hostname",
            hint="certificates are issued for DNS names only",
        )
    labels = name.split(".")
    if (
        len(name) > MAX_HOSTNAME
        or len(labels) < 2
        or not all(_LABEL.match(label) for label in labels)
        or labels[-1].isdigit()
    ):
        raise InvalidInput(
            f"invalid hostname {_shown(value)!r}",
            hint="a fully qualified DNS name such as www.example.com: labels of letters, "
            "digits and dashes (1-63 characters, not starting or ending with a dash), "
            f"at most {MAX_HOSTNAME} characters in all",
        )
    return name


def app_hostname(app_name: str, domain: str) -> str:
    return f"{app_name}.{domain}"


def control_plane_hostname(domain: str) -> str:
    return f"{CONTROL_PLANE_LABEL}.{domain}"


def is_valid(name: str) -> bool:
    try:
        validate_hostname(name)
    except AeroError:
        return False
    return True


def check_custom_hostname(hostname: str, app_name: str, domain: str) -> str:
    """A custom name for `app_name`: valid, and not one of the platform's own names. Names
    under the platform's domain are allowed only below the app's own name."""
    name = validate_hostname(hostname)
    own = app_hostname(app_name, domain)
    if name == own:
        raise Conflict(
            f"{name} is {app_name}'s own name: it gets a certificate automatically",
            hint=f"see `aero certs list -a {app_name}`",
            code="already_exists",
        )
    if (name == domain or name.endswith("." + domain)) and not name.endswith("." + own):
        raise InvalidInput(
            f"{name} is under the platform's domain {domain} and is not {app_name}'s",
            hint=f"names under {domain} belong to the platform and its apps; "
            f"{app_name} may add names below {own}",
            code="reserved_hostname",
        )
    return name
