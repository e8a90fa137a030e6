"""The relay engine (srt_launcher/relay/loop.py) on its own: real sockets, no root.

Each test runs one ``Loop`` in a child interpreter (it serves until it
ends) in front of peers that live in this process, and checks what the
peers see. The end-to-end tests of both relays are tests/test_relay_*.py.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

# The child: a listener on 127.0.0.1, a Loop in front of UPSTREAM, run until it returns.
_DRIVER = textwrap.dedent(
    """
    import json, os, sys, _socket
    from srt_launcher.relay import loop
    from srt_launcher.errors import LauncherError, report
    options = json.loads(sys.argv[1])
    family = _socket.AF_UNIX if isinstance(options["upstream"], str) else _socket.AF_INET
    address = options["upstream"] if family == _socket.AF_UNIX else tuple(options["upstream"])
    upstream = loop.Upstream(family, address, "test upstream")
    if options.get("crash_every"):
        class Crashing(loop.Upstream):
            made = 0
            def prepare(self, sock):
                Crashing.made += 1
                if Crashing.made % options["crash_every"] == 0:
                    raise RuntimeError("a bug in one connection")
        upstream = Crashing(family, address, "test upstream")
    listener = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    print(listener.getsockname()[1], flush=True)
    if options.get("nofile"):
        import resource
        resource.setrlimit(resource.RLIMIT_NOFILE, (options["nofile"], options["nofile"]))
    kwargs = {k: options[k] for k in ("connect_timeout", "once", "linger") if k in options}
    try:
        status = loop.Loop(listener, upstream, **kwargs).run()
    except LauncherError as err:
        status = report(err)
    os._exit(status)
    """
)


class Served:
    """A Loop in a child interpreter; ``port`` is its listener's."""

    def __init__(self, **options) -> None:  # type: ignore[no-untyped-def]
        self.process = subprocess.Popen(
            [sys.executable, "-c", _DRIVER, json.dumps(options)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.port = int(self.process.stdout.readline())

    def connect(self, timeout: float = 10) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)

    def wait(self, timeout: float = 10) -> tuple[int, str]:
        status = self.process.wait(timeout=timeout)
        return status, self.process.stderr.read()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.process.stdout.close()
        self.process.stderr.close()


@pytest.fixture
def served():  # type: ignore[no-untyped-def]
    started: list[Served] = []

    def start(**options) -> Served:  # type: ignore[no-untyped-def]
        loop = Served(**options)
        started.append(loop)
        return loop

    yield start
    for loop in started:
        loop.stop()


class EchoServer:
    """A TCP echo server on 127.0.0.1 that accepts only when told to (``accepting``)."""

    def __init__(self, backlog: int = 64) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(backlog)
        self.address = self.listener.getsockname()
        self.accepted: list[socket.socket] = []

    def accept_and_echo(self) -> None:
        conn, _ = self.listener.accept()
        self.accepted.append(conn)
        threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def serve(self) -> None:
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                self.accept_and_echo()
            except OSError:
                return

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        try:
            while data := conn.recv(65536):
                conn.sendall(data)
        except OSError:
            pass
        conn.close()

    def close(self) -> None:
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in accept()
        except OSError:
            pass
        self.listener.close()
        for conn in self.accepted:
            conn.close()


@pytest.fixture
def echo_server():  # type: ignore[no-untyped-def]
    server = EchoServer()
    yield server
    server.close()


def echoes(sock: socket.socket, payload: bytes = b"ping") -> bool:
    sock.sendall(payload)
    got = b""
    while len(got) < len(payload):
        data = sock.recv(len(payload) - len(got))
        if not data:
            return False
        got += data
    return got == payload


def closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_an_upstream_connect_that_never_completes_times_out_while_others_are_served(served) -> None:
    # An accept queue of one, filled: further SYNs are dropped, so a connect
    # to it neither succeeds nor fails until it times out.
    black_hole = EchoServer(backlog=0)
    try:
        loop = served(upstream=list(black_hole.address), connect_timeout=1.0)
        steady = loop.connect()
        black_hole.accept_and_echo()  # the relay's connect for `steady`, taken
        assert echoes(steady)
        filler = socket.create_connection(black_hole.address)  # fills the queue
        started = time.monotonic()
        stuck = loop.connect()
        stuck.sendall(b"anyone?")
        for _ in range(5):  # the loop is not blocked in the pending connect
            assert echoes(steady, b"still served")
        assert closed_by_peer(stuck), "the timed-out connection must be closed"
        assert 0.9 < time.monotonic() - started < 10
        assert echoes(steady, b"after the timeout")
        filler.close()
        steady.close()
        stuck.close()
    finally:
        black_hole.close()
    loop.process.kill()
    _, stderr = loop.process.communicate()
    assert "srt-launcher: relay: connect: test upstream: Connection timed out\n" in stderr


def test_out_of_descriptors_with_no_connection_open_it_stops_so_the_port_refuses(served, echo_server) -> None:
    echo_server.serve()
    # Enough for the interpreter's own descriptors, the listener and the
    # epoll instance: none left for a connection.
    loop = served(upstream=list(echo_server.address), nofile=5)
    client = loop.connect()
    status, stderr = loop.wait()
    assert status == 125, stderr
    assert "no descriptor left for a connection" in stderr and "Too many open files" in stderr
    assert closed_by_peer(client)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", loop.port), timeout=5)


def test_a_bug_in_one_connection_closes_that_connection_only(served, echo_server) -> None:
    echo_server.serve()
    loop = served(upstream=list(echo_server.address), crash_every=2)
    first = loop.connect()
    assert echoes(first)
    second = loop.connect()
    assert closed_by_peer(second)
    third = loop.connect()
    assert echoes(third) and echoes(first)
    assert loop.process.poll() is None
    for sock in (first, second, third):
        sock.close()


def test_once_serves_one_connection_closes_the_listener_and_returns_0(served, echo_server) -> None:
    echo_server.serve()
    loop = served(upstream=list(echo_server.address), once=True)
    with loop.connect() as client:
        assert echoes(client, b"the one")
        time.sleep(0.2)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", loop.port), timeout=5)
        client.shutdown(socket.SHUT_WR)
        assert client.recv(10) == b""
    assert loop.wait() == (0, "")


def test_once_with_an_unreachable_upstream_returns_1(served) -> None:
    refusing = socket.socket()
    refusing.bind(("127.0.0.1", 0))  # bound, not listening
    try:
        loop = served(upstream=list(refusing.getsockname()), once=True)
        with loop.connect() as client:
            assert closed_by_peer(client)
        status, stderr = loop.wait()
    finally:
        refusing.close()
    assert status == 1
    assert stderr == "srt-launcher: relay: connect: test upstream: Connection refused\n"


def test_linger_closes_a_connection_that_long_after_its_first_eof(served) -> None:
    held: list[socket.socket] = []
    upstream = socket.socket()
    upstream.bind(("127.0.0.1", 0))
    upstream.listen(4)
    try:
        loop = served(upstream=list(upstream.getsockname()), linger=0.5)
        with loop.connect() as client:
            peer, _ = upstream.accept()
            held.append(peer)  # never closes its side: only the linger ends the connection
            started = time.monotonic()
            client.shutdown(socket.SHUT_WR)
            assert peer.recv(10) == b""
            assert client.recv(10) == b""
            assert 0.4 < time.monotonic() - started < 5
    finally:
        for sock in held:
            sock.close()
        upstream.close()


def test_without_linger_a_half_closed_connection_stays_open(served) -> None:
    held: list[socket.socket] = []
    upstream = socket.socket()
    upstream.bind(("127.0.0.1", 0))
    upstream.listen(4)
    try:
        loop = served(upstream=list(upstream.getsockname()))
        with loop.connect() as client:
            peer, _ = upstream.accept()
            held.append(peer)
            client.shutdown(socket.SHUT_WR)
            assert peer.recv(10) == b""  # the half-close arrived
            time.sleep(1.0)
            peer.sendall(b"late reply")  # the other direction still works
            assert client.recv(10) == b"late reply"
    finally:
        for sock in held:
            sock.close()
        upstream.close()


def test_a_bulk_transfer_does_not_take_the_loop_from_short_connections(served, echo_server) -> None:
    """A loose check of fairness (make bench measures it): while one
    connection streams, short exchanges through the same loop still go."""
    echo_server.serve()
    loop = served(upstream=list(echo_server.address))
    bulk = loop.connect(timeout=30)
    stop = threading.Event()

    def stream() -> None:
        chunk = b"b" * (1 << 20)
        try:
            while not stop.is_set():
                bulk.sendall(chunk)
        except OSError:
            pass  # closed at the end of the test

    def drain() -> None:
        try:
            while not stop.is_set() and bulk.recv(1 << 20):
                pass
        except OSError:
            pass

    threads = [threading.Thread(target=stream, daemon=True), threading.Thread(target=drain, daemon=True)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.2)
        started = time.monotonic()
        for index in range(200):
            with loop.connect() as short:
                assert echoes(short, b"short %d" % index)
        assert time.monotonic() - started < 20
    finally:
        stop.set()
        bulk.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            thread.join(timeout=10)
        bulk.close()
