"""Serving the web view: a socket bound before uvicorn starts (so port 0 can name the port it got), and a Host check
whenever the view is bound to a loopback address."""

import ipaddress
import logging
import socket
from typing import Callable, Optional
from urllib.parse import urlsplit, urlunsplit

from mmlib.persistence.store import Store

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine only (`localhost` or a loopback address)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bound_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to `host`:`port` (0: a free port) and listening; OSError, saying what to do, when it
    cannot be bound."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as error:
        sock.close()
        raise OSError(error.errno, f"cannot serve on {host}:{port} ({error.strerror or error}); choose another "
                                   "--port (0 picks a free one) or --host") from error
    return sock


def url_of(sock: socket.socket) -> str:
    """The http URL of a bound socket (`http://[::1]:8000/` for IPv6)."""
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/"


def shown_location(location: str) -> str:
    """A store location as pages may show it: a URI's password left out."""
    parts = urlsplit(location)
    if parts.password is None:
        return location
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def serve(store: Store, host: str = DEFAULT_HOST, port: int = 0, *, title: str = "mmlib store",
          announce: Optional[Callable[[str], None]] = None) -> None:
    """Serve the web view of `store` on `host`:`port` until interrupted; `announce(url)` is called once it listens.

    Bound to a loopback address, the view answers only requests addressed to this machine by name (localhost,
    127.0.0.1, ::1); bound elsewhere it answers anyone who reaches it: it has no authentication.
    """
    import uvicorn

    from mmlib.ui.app import create_app

    sock = bound_socket(host, port)
    app = create_app(store, title=title, allowed_hosts=LOOPBACK_NAMES if is_loopback(host) else None)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    if announce is not None:
        announce(url_of(sock))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
