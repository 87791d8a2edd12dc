"""The FastAPI application: routers, request ids, body limits, and errors in one shape."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aerodrome import __version__
from aerodrome.api.authz import Requires, declared
from aerodrome.api.routes import (
    apps,
    audit,
    auth,
    certs,
    deploys,
    http_service,
    logs,
    machines,
    meta,
    orgs,
    secrets,
    tokens,
)
from aerodrome.api.routes.deploys import ARTIFACT_PATH
from aerodrome.api.routes.deploys import MAX_ARTIFACT as ARTIFACT_MAX
from aerodrome.config import Settings
from aerodrome.errors import AeroError
from aerodrome.ids import new_id
from aerodrome.services import Services

log = logging.getLogger("aerodrome.api")
MAX_BODY = 2 << 20  # 2 MiB: small JSON documents, and an app's secrets (1 MiB) with room to spare


ROUTERS = (
    meta.router,
    auth.router,
    orgs.router,
    apps.router,
    tokens.router,
    secrets.router,
    http_service.router,
    certs.router,
    deploys.router,
    logs.router,
    machines.router,
    audit.router,
)


def api_routes() -> list[APIRoute]:
    """Every route of the API, with its full path (for the OpenAPI document and tests)."""
    return [route for router in ROUTERS for route in router.routes if isinstance(route, APIRoute)]


def _allowed_methods(path: str) -> list[str]:
    """Every method some route serves at `path` (the framework names only the first match)."""
    methods: set[str] = set()
    for route in api_routes():
        if route.path_regex.match(path):
            methods |= route.methods
    return sorted(methods)


def _error(status: int, code: str, message: str, hint: str = "", **headers: str) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "hint": hint}}
    return JSONResponse(body, status_code=status, headers=headers or None)


class RequestContext:
    """Pure ASGI middleware: a request id on every request and response, and a hard cap on
    body size that holds for chunked bodies too (Content-Length can lie or be absent)."""

    def __init__(self, app: ASGIApp, max_body: int = MAX_BODY) -> None:
        self.app = app
        self.max_body = max_body

    def _too_large(self, request_id: str, limit: int) -> JSONResponse:
        return _error(
            413,
            "body_too_large",
            f"request body is larger than {limit} bytes",
            "send a smaller document",
            **{"aero-request-id": request_id},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_id("req")
        scope.setdefault("state", {})["request_id"] = request_id
        # Artifact uploads stream to disk with their own limit; every other body is JSON.
        limit = ARTIFACT_MAX if ARTIFACT_PATH.match(scope.get("path", "")) else self.max_body
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await self._too_large(request_id, limit)(scope, receive, send)
            return
        seen = 0
        too_large = False
        started = False

        async def limited_receive() -> Message:
            nonlocal seen, too_large
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    too_large = True
                    raise _BodyTooLarge
            return message

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if too_large:
                return  # whatever the app made of the cut body is replaced by the 413 below
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [
                    *message.get("headers", []),
                    (b"aero-request-id", request_id.encode()),
                ]
            await send(message)

        with contextlib.suppress(_BodyTooLarge):
            await self.app(scope, limited_receive, send_with_id)
        if too_large and not started:
            await self._too_large(request_id, limit)(scope, receive, send)


class _BodyTooLarge(Exception):
    """Raised from `receive` once a streamed body passes the cap."""


def create_app(services: Services | None = None, settings: Settings | None = None) -> FastAPI:
    if services is None:
        services = Services.open(settings or Settings.from_env())
    app = FastAPI(
        title="aerodrome",
        version=__version__,
        openapi_url="/v1/openapi.json",
        docs_url=None,
        redoc_url=None,
    )
    app.state.services = services
    app.add_middleware(RequestContext)
    for router in ROUTERS:
        app.include_router(router)

    @app.exception_handler(AeroError)
    async def aero_error(request: Request, exc: AeroError) -> JSONResponse:
        if exc.status == 401:  # RFC 6750: say which scheme, and that the token was the problem
            challenge = f'Bearer error="invalid_token", error_description="{exc.code}"'
            return _error(401, exc.code, exc.message, exc.hint, **{"www-authenticate": challenge})
        return _error(exc.status, exc.code, exc.message, exc.hint)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
            problems.append(f"{where}: {err.get('msg', 'invalid')}")
        message = "; ".join(problems[:5]) or "invalid request"
        if any(err.get("type") == "json_invalid" for err in exc.errors()):
            message = "request body is not valid JSON"
        return _error(400, "invalid_request", message, "see /v1/openapi.json for the schema")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return _error(
                404, "not_found", f"no such route: {request.url.path}", "see /v1/openapi.json"
            )
        if exc.status_code == 405:
            return _error(
                405,
                "method_not_allowed",
                f"{request.method} is not allowed on {request.url.path}",
                "see /v1/openapi.json",
                allow=", ".join(_allowed_methods(request.url.path)),
            )
        return _error(exc.status_code, "http_error", str(exc.detail))

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception) -> JSONResponse:
        request_id = getattr(request.state, "request_id", "")
        # The exception's text can hold anything (including input); log its type only.
        log.error(
            "unhandled %s in %s %s (request %s)",
            type(exc).__name__,
            request.method,
            request.url.path,
            request_id,
        )
        return _error(
            500,
            "internal_error",
            "internal error",
            f"report request id {request_id} to the platform operator",
        )

    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The generated document, plus what each operation requires: the bearer scheme and the
    declared action (`x-aero-action`), so clients can see the permission model."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
    schema.setdefault("components", {})["securitySchemes"] = {
        "token": {"type": "http", "scheme": "bearer", "description": "an aero1_ token"}
    }
    for route in api_routes():
        declaration = declared(route)
        for method in route.methods:
            operation = schema["paths"].get(route.path_format, {}).get(method.lower())
            if operation is None:
                continue
            if isinstance(declaration, Requires):
                operation["security"] = [{"token": []}]
                operation["x-aero-action"] = declaration.action or "authenticated"
    app.openapi_schema = schema
    return schema


def app_from_env() -> Any:
    """uvicorn factory: `uvicorn --factory aerodrome.api.app:app_from_env`."""
    return create_app()
