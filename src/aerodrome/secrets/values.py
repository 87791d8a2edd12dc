"""A secret value in memory: never shown by `repr`, `str` or a log call."""

from __future__ import annotations


class SecretValue:
    """Holds a plaintext value. Read it with `reveal()`, on purpose, where it is needed."""

    __slots__ = ("_value",)

    def __init__(self, value: bytes) -> None:
        self._value = value

    def reveal(self) -> bytes:
        return self._value

    def reveal_text(self) -> str:
        return self._value.decode("utf-8")

    def __repr__(self) -> str:
        return "SecretValue(***)"

    __str__ = __repr__

    def __len__(self) -> int:
        return len(self._value)

    def __eq__(self, other: object) -> bool:
        import hmac

        return isinstance(other, SecretValue) and hmac.compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        raise TypeError("SecretValue is not hashable")

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("SecretValue cannot be pickled")
