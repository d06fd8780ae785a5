"""Listening sockets opened before anything else starts, so a busy port is one clear line and an exit, not a hang."""

from __future__ import annotations

import contextlib
import errno
import socket


class ListenError(Exception):
    """The address cannot be listened on; the message names it and says why in one line."""


def open_listener(host: str, port: int, what: str = "") -> socket.socket:
    """A bound TCP socket for ``host:port`` (not yet listening: the server calls listen), or ListenError."""
    label = f"{what} " if what else ""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ListenError(f"cannot listen on {host}:{port}: unknown host ({exc.strerror})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: restarts reuse TIME_WAIT ports
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ListenError(f"cannot listen on {host}:{port}{_why(exc, label)}") from None
    sock.set_inheritable(True)
    return sock


def _why(exc: OSError, label: str) -> str:
    if exc.errno == errno.EADDRINUSE:
        return f": the {label}port is already in use by another process"
    if exc.errno == errno.EACCES:
        return ": permission denied (ports below 1024 need privileges)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return ": no such address on this machine"
    return f": {exc.strerror or exc}"


def port_free(host: str, port: int) -> str | None:
    """None if ``host:port`` can be listened on now, else why not (one line)."""
    try:
        sock = open_listener(host, port)
    except ListenError as exc:
        return str(exc)
    with contextlib.suppress(OSError):
        sock.close()
    return None
