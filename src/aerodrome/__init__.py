"""aerodrome: a self-hosted application platform with Fly.io's security model built in."""

__version__ = "0.1.0"
