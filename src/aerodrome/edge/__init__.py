"""The edge: TLS termination, routing, policies and WebSockets, in front of every app."""

from aerodrome.edge.native import compiled_dir

# The request path runs compiled when a build that matches these sources exists (see
# `native`): its directory comes first on this package's path.
_compiled = compiled_dir()
if _compiled is not None:
    __path__.insert(0, str(_compiled))
