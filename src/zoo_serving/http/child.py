"""A front door process: ``python -m zoo_serving.http.child --fd N`` serves the app on the
listening socket its parent bound and passed down (fd ``N``), with the config as JSON on
stdin; it writes ``started`` on stdout once uvicorn accepts connections, and stops (letting
requests in flight finish) on SIGTERM.

It is a queue client like any other, so several can share one port (the kernel hands each
connection to one of them), each with its own inbox; none shares a GIL with the workers.
"""

from __future__ import annotations

import argparse
import json
import logging
import socket
import sys
import threading
import time


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    from ..config import load_config
    from .app import create_app
    from .fast import FastPaths

    args = argparse.ArgumentParser(prog="zoo_serving.http.child")
    args.add_argument("--fd", type=int, required=True, help="the listening socket")
    opts = args.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    config = load_config(json.loads(sys.stdin.read()))
    sock = socket.socket(fileno=opts.fd)
    server = uvicorn.Server(
        uvicorn.Config(
            FastPaths(create_app(config)),
            loop="auto",
            http="auto",
            ws="none",
            proxy_headers=False,  # the door trusts no forwarding headers (and skips their pass)
            lifespan="on",
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=int(config.http.timeout_s) + 1,
        )
    )

    def say_started() -> None:
        while not server.started and not server.should_exit:
            time.sleep(0.01)
        if server.started:
            print("started", flush=True)

    threading.Thread(target=say_started, daemon=True).start()
    server.run(sockets=[sock])
    return 0 if server.started else 3


if __name__ == "__main__":
    sys.exit(main())
