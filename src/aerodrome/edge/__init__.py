"""The edge: TLS termination, routing, policies and WebSockets, in front of every app."""
