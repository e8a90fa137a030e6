"""Relay clients shared by the host-relay and in-sandbox-relay tests.

Imported by the tests, and run as a script inside sandboxes (its source is
passed with ``python3 -c``, since uid 65534 may not be able to read the
checkout): ``python3 -c SOURCE COMMAND ADDRESS ARGS...``, printing one line.

ADDRESS is ``tcp:HOST:PORT`` or ``unix:PATH``. Every client checks what it
gets back byte for byte against what it sent, through an echoing upstream.
"""

import os
import socket
import sys
import threading


def connect(address: str, timeout: float = 30.0) -> socket.socket:
    kind, _, rest = address.partition(":")
    if kind == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target: object = rest
    else:
        host, _, port = rest.rpartition(":")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        target = (host, int(port))
    sock.settimeout(timeout)
    sock.connect(target)
    return sock


def recv_all(sock: socket.socket) -> bytes:
    chunks = []
    while data := sock.recv(1 << 16):
        chunks.append(data)
    return b"".join(chunks)


def exchange(address: str, payload: bytes) -> bytes:
    """Send ``payload``, half-close, return everything that came back."""
    with connect(address) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        return recv_all(sock)


def sequential(address: str, count: int) -> str:
    """``count`` short connections one after the other, each with its own payload."""
    for index in range(count):
        payload = b"connection %d\n" % index
        got = exchange(address, payload)
        if got != payload:
            return f"connection {index}: sent {payload!r}, got {got!r}"
    return f"ok {count}"


def concurrent(address: str, count: int, size: int) -> str:
    """``count`` connections open at once, each moving ``size`` random bytes both ways."""
    sockets = [connect(address) for _ in range(count)]  # all open before any sends
    failures: list[str] = []

    def run(index: int, sock: socket.socket) -> None:
        payload = os.urandom(size)
        try:
            with sock:
                sender = threading.Thread(target=lambda: (sock.sendall(payload), sock.shutdown(socket.SHUT_WR)))
                sender.start()
                got = recv_all(sock)
                sender.join()
        except OSError as err:
            failures.append(f"connection {index}: {err!r}")
            return
        if got != payload:
            failures.append(f"connection {index}: {len(got)} of {size} bytes, {'equal' if payload.startswith(got) else 'different'}")

    threads = [threading.Thread(target=run, args=(index, sock)) for index, sock in enumerate(sockets)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return "; ".join(failures[:5]) if failures else f"ok {count}"


def main() -> None:
    command, address, *args = sys.argv[1:]
    if command == "sequential":
        print(sequential(address, int(args[0])), flush=True)
    elif command == "concurrent":
        print(concurrent(address, int(args[0]), int(args[1])), flush=True)
    else:
        raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    main()
