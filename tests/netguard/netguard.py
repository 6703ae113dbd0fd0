"""Network guard for tests: any non-loopback socket use or name lookup raises and is logged.

``tests/conftest.py`` installs it in the test process by loading this file by its path (not ``import
sitecustomize``, which would return a system ``sitecustomize`` already imported at start-up and leave the guard
off), and every subprocess a test starts gets it from ``sitecustomize.py`` beside this file (the folder is put
first on ``PYTHONPATH``). Blocked attempts are appended to ``$NETGUARD_LOG`` so a test can fail even when the code
under test swallowed the error (Ultralytics treats a ConnectionError as "offline").

It works through Python's audit hooks (``sys.addaudithook``), so it sees what goes through Python's ``socket``
module: connections, datagrams and DNS look-ups (``getaddrinfo``, ``gethostbyname[_ex]``, ``gethostbyaddr``,
``getnameinfo``). It cannot see native code that opens sockets itself (a C/C++ extension's own networking,
libcurl, a non-Python subprocess such as ``curl`` or ``git``), nor a Python subprocess started with ``-I``/``-E``/``-S``
(which ignores ``PYTHONPATH`` or skips ``sitecustomize``).
"""
import ipaddress
import os
import socket
import sys

_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback", ""}
# Look-ups of a name (or an address, for the reverse ones): the first argument is the host.
_LOOKUPS = ("socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr")
_SENDS = ("socket.connect", "socket.connect_ex", "socket.sendto", "socket.sendmsg")


def _is_loopback(host) -> bool:
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    host = str(host).strip("[]")
    if host.lower() in _LOOPBACK_NAMES:
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
    if event in _LOOKUPS:
        if args and not _is_loopback(args[0]):
            _block(event, args[0])
    elif event == "socket.getnameinfo":
        address = args[0] if args else None
        if isinstance(address, tuple) and address and not _is_loopback(address[0]):
            _block(event, address)
    elif event in _SENDS:
        sock, address = args[0], args[-1] if event in ("socket.sendto", "socket.sendmsg") else args[1]
        if getattr(sock, "family", None) == socket.AF_UNIX or not isinstance(address, tuple):
            return
        if not _is_loopback(address[0]):
            _block(event, address)


def installed() -> bool:
    """Whether the guard's audit hook is installed in this process."""
    return bool(getattr(sys, "_netguard_installed", False))


if not installed():
    sys.addaudithook(_hook)
    sys._netguard_installed = True
