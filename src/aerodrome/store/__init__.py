"""The store: one source of truth for the platform's state (SQLite or PostgreSQL)."""

from aerodrome.store.db import Store

__all__ = ["Store"]
