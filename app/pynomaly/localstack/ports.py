"""Loopback ports: pick a free one, or check that a configured one is free before anything starts."""

from __future__ import annotations

import socket

from pynomaly.localstack.errors import LocalStackError

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A port nothing listens on right now (the kernel's pick; a tiny race is accepted for local use)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR, as redis-server and the JVM bind: a listener makes the port busy, connections
        # of a stopped server lingering in TIME_WAIT do not (a restart on the same port must work).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
        return True


def require_free(port: int, what: str, option: str = "") -> None:
    if not port_is_free(port):
        hint = f" or choose another with {option}" if option else ""
        raise LocalStackError(f"port {port} on {LOOPBACK} ({what}) is already in use: stop what uses it{hint}")


def pick_port(configured: int | None, what: str, option: str = "") -> int:
    """The configured port if it is free (else a clear error), or a free one when none is configured."""
    if configured:
        require_free(configured, what, option)
        return configured
    return free_port()


def can_connect(port: int, host: str = LOOPBACK, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
