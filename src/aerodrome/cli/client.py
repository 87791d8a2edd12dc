"""The API client the commands share: settings from `AERO_*`, errors as `AeroError`."""

from __future__ import annotations

import os
import ssl
import sys
from pathlib import Path
from typing import IO, Any

import httpx

from aerodrome.errors import AeroError

DEFAULT_API_URL = "http://127.0.0.1:4280"


class Client:
    def __init__(self, token: str | None = None, url: str | None = None) -> None:
        self.url = (url or os.environ.get("AERO_API_URL") or DEFAULT_API_URL).rstrip("/")
        self.token = token or os.environ.get("AERO_API_TOKEN") or ""
        bundle = os.environ.get("AERO_CA_BUNDLE")
        target = httpx.URL(self.url)
        self._extensions: dict[str, Any] = {}
        self._host_header: str | None = None
        base = self.url
        if target.host.endswith(".localhost"):
            # RFC 6761: *.localhost is loopback, but not every resolver knows it. Connect to
            # 127.0.0.1 and keep the name for SNI, certificate checks and Host.
            base = str(target.copy_with(host="127.0.0.1"))
            self._extensions = {"sni_hostname": target.host}
            self._host_header = target.netloc.decode("ascii")
        verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=bundle) if bundle else True
        )
        self._http = httpx.Client(base_url=base, verify=verify, timeout=30.0)

    def __repr__(self) -> str:  # never show the token
        return f"Client(url={self.url!r})"

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        auth: bool = True,
        content: IO[bytes] | None = None,
        content_type: str | None = None,
        timeout: float | None = None,
    ) -> Any:
        headers = {"user-agent": "aero-cli"}
        if content_type is not None:
            headers["content-type"] = content_type
        if auth:
            if not self.token:
                raise AeroError(
                    "no API token",
                    hint="set AERO_API_TOKEN (`set -a; . .aerodrome/aero.env` after `aero up`) "
                    "or pass --token",
                    code="unauthenticated",
                )
            headers["authorization"] = f"Bearer {self.token}"
        clean = {k: v for k, v in (params or {}).items() if v is not None}
        if self._host_header:
            headers["host"] = self._host_header
        try:
            response = self._http.request(
                method, path, json=json, content=content, params=clean, headers=headers,
                extensions=self._extensions, timeout=timeout or self._http.timeout,
            )  # fmt: skip
        except httpx.ConnectError as exc:
            if "CERTIFICATE_VERIFY_FAILED" in str(exc):
                raise AeroError(
                    f"the certificate of {self.url} is not trusted",
                    hint="set AERO_CA_BUNDLE to the platform's CA certificate (aero.env has it)",
                    code="untrusted_certificate",
                ) from exc
            raise AeroError(
                f"cannot reach the aerodrome API at {self.url}",
                hint="is `aero up` running? check AERO_API_URL",
                code="unreachable",
            ) from exc
        except httpx.HTTPError as exc:
            raise AeroError(
                f"request to {self.url} failed: {type(exc).__name__}", code="unreachable"
            ) from exc
        return self._result(response)

    @staticmethod
    def _result(response: httpx.Response) -> Any:
        if response.status_code >= 400:
            try:
                error = response.json()["error"]
            except (ValueError, KeyError, TypeError):
                raise AeroError(
                    f"API answered {response.status_code}",
                    code="api_error",
                    status=response.status_code,
                ) from None
            raise AeroError(
                error.get("message", ""),
                hint=error.get("hint", ""),
                code=error.get("code", "api_error"),
                status=response.status_code,
            )
        return response.json()

    def upload(self, path: str, file: Path) -> Any:
        """PUT a file as the raw body (artifacts), streamed from disk."""
        with file.open("rb") as body:
            return self.request(
                "PUT", path, content=body, content_type="application/gzip", timeout=600.0
            )

    def get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> Any:
        return self.request("POST", path, **kw)

    def delete(self, path: str, **kw: Any) -> Any:
        return self.request("DELETE", path, **kw)


def read_token_input(option: str | None) -> str:
    """A token to work on offline: `--token`, `--token -` (stdin), `AERO_API_TOKEN`, or stdin
    when it is piped."""
    if option == "-" or (
        option is None and not os.environ.get("AERO_API_TOKEN") and not sys.stdin.isatty()
    ):
        value = sys.stdin.read().strip()
    else:
        value = option or os.environ.get("AERO_API_TOKEN", "")
    if not value:
        raise AeroError(
            "no token given",
            hint="pass --token TOKEN, pipe it on stdin, or set AERO_API_TOKEN",
            code="malformed",
        )
    return value
