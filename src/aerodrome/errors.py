"""The one error type that crosses layers: a code a program can branch on, a message a
person can read, and a hint that says what to do next."""

from __future__ import annotations


class AeroError(Exception):
    """A failure the caller caused or can act on. Never carries a secret value."""

    status = 400
    code = "invalid_request"

    def __init__(
        self,
        message: str,
        *,
        hint: str = "",
        code: str | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status

    def to_dict(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.code, "message": self.message, "hint": self.hint}}


class NotFound(AeroError):
    status = 404
    code = "not_found"


class Conflict(AeroError):
    status = 409
    code = "conflict"


class InvalidInput(AeroError):
    status = 400
    code = "invalid_request"
