"""`python -m aerodrome.api.serve`: the control-plane API as its own process (run by `aero up`)."""

from __future__ import annotations

import argparse
import logging
import os

import uvicorn

from aerodrome.api.app import create_app


def main() -> None:
    parser = argparse.ArgumentParser(description="aerodrome control-plane API")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4280)
    args = parser.parse_args()
    level = os.environ.get("AERO_LOG_LEVEL", "info").lower()
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    uvicorn.run(
        create_app(),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_level=level,
        server_header=False,
        proxy_headers=False,
    )


if __name__ == "__main__":
    main()
