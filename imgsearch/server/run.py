"""Serving stage, start-up: open the index once, bind, make the process's settings, warm the
model, run uvicorn.

The settings are this process's, made here and not by the library: one torch/FAISS thread per
request (ground/threads.py) and, on the CPU, glibc's malloc keeping freed memory for the
photos that requests encode (model/allocator.py). create_app() alone leaves them as they are.

The socket is bound before the model loads, so a port in use is said at once; the URL
printed is the one bound (port 0 picks a free port and prints it).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket

from imgsearch.ground.errors import ServeFailed
from imgsearch.ground.threads import QUERY_THREADS, use_threads
from imgsearch.model.allocator import keep_freed_memory

__all__ = ["serve", "is_loopback", "local_names"]

log = logging.getLogger(__name__)

WARM_UP_QUERY = "a photo"


def serve(
    index_dir: str | os.PathLike,
    *,
    model: str | os.PathLike | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    device: str = "auto",
    log_level: str = "info",
) -> None:
    """Serve the index in `index_dir` over HTTP until stopped (Ctrl-C). Raises the library's
    errors for an index that cannot be opened, and ServeFailed (the CLI's `Error: ...`) when
    `host`:`port` cannot be bound."""
    import uvicorn

    from imgsearch.index import Index
    from imgsearch.server.app import create_app

    with Index.open(index_dir, model=model, device=device) as index:
        listener = _listen(host, port)
        try:
            use_threads(QUERY_THREADS)
            if index.device.type == "cpu":
                keep_freed_memory()  # photos sent to search with are encoded here (model/allocator.py)
            _warm_up(index)
            app = create_app(index, allowed_hosts=local_names(host) if is_loopback(host) else None)
            if not is_loopback(host):
                log.warning(
                    "serving on %s: the API has no authentication, so anyone who can reach this "
                    "port can search and see every indexed photo. Use --host 127.0.0.1 (the "
                    "default) unless that is what you want.",
                    host,
                )
            print(f"imgsearch: serving {index.directory} at {_url(listener)} (Ctrl-C to stop)", flush=True)
            config = uvicorn.Config(app, log_level=log_level, server_header=False)
            uvicorn.Server(config).run(sockets=[listener])
        finally:
            listener.close()


def is_loopback(host: str) -> bool:
    """Whether `host` is reachable only from this machine: localhost or a loopback address."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def local_names(host: str) -> set[str]:
    """The Host names a server bound to loopback `host` answers to: this machine's own names
    (a browser sends "[::1]" for an IPv6 address), never a name some DNS made point here."""
    names = {"localhost", "127.0.0.1", "[::1]", host.lower()}
    if ":" in host and not host.startswith("["):
        names.add(f"[{host.lower()}]")
    return names


def _listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port, or ServeFailed that says what to change."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise ServeFailed(
            f"cannot serve on host {host!r} ({exc.strerror}); give an address of this machine, such as 127.0.0.1."
        ) from None
    listener = socket.socket(family, kind, proto)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(128)
    except OSError as exc:
        listener.close()
        raise ServeFailed(
            f"cannot listen on {host}:{port} ({exc.strerror}); pick another --port, or stop what uses it."
        ) from None
    return listener


def _url(listener: socket.socket) -> str:
    host, port = listener.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def _warm_up(index) -> None:
    """Load the model and run one tiny search, so that the first request is not the slow one
    (it also fills the cache of class-name vectors)."""
    index.model  # noqa: B018 - reading the property loads the model
    if index.image_count():
        index.search(WARM_UP_QUERY, k=1)
