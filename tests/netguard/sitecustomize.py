"""Network guard for tests: any non-loopback socket use raises and is logged.

Loaded in the test process by ``tests/conftest.py`` and in every subprocess a test starts (this folder is put on
``PYTHONPATH``). Blocked attempts are appended to ``$NETGUARD_LOG`` so a test can fail even when the code under
test swallowed the error (Ultralytics treats a ConnectionError as "offline").
"""
import ipaddress
import os
import socket
import sys

_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", ""}


def _is_loopback(host) -> bool:
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    host = str(host).strip("[]")
    if host in _LOOPBACK_NAMES:
        return True
    try:
        addr = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    return addr.is_loopback or addr.is_unspecified


def _block(event: str, target) -> None:
    message = f"network access blocked in tests: {event} {target!r}"
    log = os.environ.get("NETGUARD_LOG")
    if log:
        with open(log, "a") as f:
            f.write(message + "\n")
    raise OSError(101, message)


def _hook(event: str, args) -> None:
    if event == "socket.getaddrinfo":
        if not _is_loopback(args[0]):
            _block(event, args[0])
    elif event in ("socket.connect", "socket.sendto", "socket.connect_ex"):
        sock, address = args[0], args[1] if event != "socket.sendto" else args[-1]
        if getattr(sock, "family", None) == socket.AF_UNIX or not isinstance(address, tuple):
            return
        if not _is_loopback(address[0]):
            _block(event, address)


if not getattr(sys, "_netguard_installed", False):
    sys.addaudithook(_hook)
    sys._netguard_installed = True
