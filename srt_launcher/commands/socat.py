"""``socat``, ``srt-socat``, ``srt-launcher socat``: the subset of socat that sandbox tools use (SPEC §8).

``socat [-d…] [-t SECONDS] ADDRESS1 ADDRESS2``. The whole command line is
checked before any socket exists: an address type or option outside the
subset is exit 1 with ``socat: … not supported by srt-socat (supported: …)``.
Then, as socat does, ADDRESS1 is opened, then ADDRESS2, and bytes flow both
ways until both directions have ended (half-close propagated, where socat
closes everything 0.5 s after the first EOF unless ``-t`` says otherwise):

- A listening ADDRESS1 and a connecting ADDRESS2 — sandbox-runtime's host
  bridge and in-sandbox relays — are served by the relay event loop
  (relay/loop.py, as ``relay`` and ``run --relay``): without ``fork``, one
  connection (the listener closes when it is accepted) and exit; with it,
  every connection until killed. ``PROXY:`` there is the same CONNECT
  exchange as ``srt-launcher connect`` (relay/tunnel.py), run in the loop.
- Anything else without ``fork`` (``-`` with a connector, as ssh's
  ProxyCommand; two connectors; ...) opens both ends in order and moves the
  bytes with the stdio pump (relay/pump.py), as ``connect`` does.

A listener that cannot bind exits 1 at once (so ``TCP6-LISTEN:… ||
TCP4-LISTEN:…`` falls back). SIGTERM, SIGINT, SIGHUP: the UNIX-LISTEN socket
file is removed and the exit status is 128+signal, as socat's. Exit status 1
for anything that failed (bind, connect, a refused tunnel), 0 otherwise.

Imports are C modules only, never click (SPEC §4): this is a launch path.
"""

import os

import _signal
import _socket

from srt_launcher.errors import LauncherError, message, write_stderr

PROGRAM = "socat"
FAILED = 1

ADDRESS_TYPES = ("UNIX-LISTEN", "UNIX-CONNECT", "TCP", "TCP4", "TCP6", "TCP-LISTEN", "TCP4-LISTEN", "TCP6-LISTEN", "-",
                 "STDIO", "PROXY")  # fmt: skip
OPTIONS = ("fork", "reuseaddr", "backlog", "ipv6only", "bind", "unlink-early", "keepalive", "keepidle", "keepintvl",
           "keepcnt", "nodelay", "proxyport", "proxyauth")  # fmt: skip
_FLAGS = frozenset(("fork", "reuseaddr", "unlink-early", "keepalive", "nodelay"))  # bare, or =0/=1
_NUMBERS = frozenset(("backlog", "keepidle", "keepintvl", "keepcnt", "proxyport"))
_TCP = frozenset(("bind", "keepalive", "keepidle", "keepintvl", "keepcnt", "nodelay", "reuseaddr"))
_LISTEN = frozenset(("fork", "backlog", "reuseaddr"))
# Which options each address type takes (what socat applies there).
_APPLICABLE = {
    "UNIX-LISTEN": _LISTEN | {"unlink-early"},
    "UNIX-CONNECT": frozenset(("reuseaddr",)),
    "TCP": _TCP,
    "TCP4": _TCP,
    "TCP6": _TCP | {"ipv6only"},
    "TCP-LISTEN": _TCP | _LISTEN,
    "TCP4-LISTEN": _TCP | _LISTEN,
    "TCP6-LISTEN": _TCP | _LISTEN | {"ipv6only"},
    "STDIO": frozenset(),
    "PROXY": _TCP | {"proxyport", "proxyauth"},
}
_FAMILY = {"TCP": _socket.AF_UNSPEC, "TCP4": _socket.AF_INET, "TCP6": _socket.AF_INET6}
DEFAULT_BACKLOG = 5  # socat's
DEFAULT_PROXY_PORT = 8080  # socat's
_SUN_PATH = 108  # bytes of a Unix socket path (struct sockaddr_un)
_TERMINATING_SIGNALS = (_signal.SIGTERM, _signal.SIGINT, _signal.SIGHUP)

HELP = f"""usage: socat [-d...] [-t SECONDS] ADDRESS1 ADDRESS2

srt-socat: the subset of socat that sandbox tools use, served by srt-launcher's
relay engine. Bytes flow both ways between the two addresses until both
directions have ended (a half-close is passed on, not cut after 0.5 s).

addresses: {", ".join(ADDRESS_TYPES)}
  UNIX-LISTEN:PATH  UNIX-CONNECT:PATH  TCP[46]:HOST:PORT  TCP[46]-LISTEN:PORT
  - or STDIO        PROXY:PROXYHOST:HOST:PORT (HTTP CONNECT)
options (ADDRESS,OPTION[=VALUE],...): {", ".join(OPTIONS)}
  -d  more verbose (accepted; errors are always reported)
  -t SECONDS  after one direction ends, close the other that long after

fork is taken on a listening ADDRESS1 whose ADDRESS2 connects: every
connection is served (one process, one event loop) until killed; without
it, one connection, then exit. Exit status: 0 done, 1 on any failure
(bind, connect, refused tunnel, or a command line outside this subset),
128+N when killed by signal N (TERM, INT, HUP; a UNIX-LISTEN socket file
is removed first).
"""


class Address:
    """One parsed address: its type (``STDIO`` for ``-``), its parameters and options."""

    __slots__ = ("text", "kind", "params", "options")

    def __init__(self, text: str, kind: str, params: list[str], options: dict[str, str | int | bool]) -> None:
        self.text = text
        self.kind = kind
        self.params = params
        self.options = options

    @property
    def listening(self) -> bool:
        return self.kind.endswith("-LISTEN")

    @property
    def stdio(self) -> bool:
        return self.kind == "STDIO"

    def flag(self, name: str) -> bool:
        return bool(self.options.get(name, False))


class Command:
    __slots__ = ("linger", "first", "second")

    def __init__(self, linger: float | None, first: Address, second: Address) -> None:
        self.linger = linger
        self.first = first
        self.second = second


# ---------------------------------------------------------------- parsing


def _unsupported(what: str, supported: tuple[str, ...] | frozenset[str]) -> LauncherError:
    return LauncherError(f"{what} not supported by srt-socat (supported: {', '.join(sorted(supported))})", None, None, FAILED)


def _bad(what: str, value: str | None = None) -> LauncherError:
    return LauncherError(what, value, None, FAILED)


def parse(argv: list[str]) -> Command:
    """socat's command line, checked entirely before anything is opened; raises LauncherError (exit 1)."""
    linger = None
    args = list(argv)
    while args and args[0].startswith("-") and args[0] != "-":
        option = args.pop(0)
        if option == "--":
            break
        if len(option) > 1 and option[1:] == "d" * (len(option) - 1):
            continue  # socat's verbosity: srt-socat reports errors only
        if option == "-t" or (option.startswith("-t") and len(option) > 2):
            text = option[2:] or (args.pop(0) if args else "")
            linger = _seconds(text)
            continue
        raise _unsupported(f"option {option}", ("-d", "-t SECONDS"))
    if len(args) != 2:
        raise _bad(f"exactly 2 addresses required (there are {len(args)})")
    command = Command(linger, parse_address(args[0]), parse_address(args[1]))
    _check_combination(command)
    return command


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < 1e9 or value != value:
        raise _bad("-t: not a number of seconds", text)
    return value


def parse_address(text: str) -> Address:
    head, *option_texts = _split(text, ",")
    keyword, _, rest = head.partition(":")
    kind = "STDIO" if keyword == "-" else keyword.upper()
    if kind not in _APPLICABLE:
        raise _unsupported(f"address {keyword}", ADDRESS_TYPES)
    options = _parse_options(kind, option_texts)
    params = _split(rest, ":") if rest else []
    _check_params(kind, params, text)
    return Address(text, kind, params, options)


def _split(text: str, separator: str) -> list[str]:
    """Split on ``separator`` outside [brackets] (IPv6 literals, as socat writes them)."""
    parts, depth, current = [], 0, []
    for char in text:
        if char == "[":
            depth += 1
        elif char == "]":
            depth = max(0, depth - 1)
        if char == separator and not depth:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _parse_options(kind: str, texts: list[str]) -> dict[str, str | int | bool]:
    options: dict[str, str | int | bool] = {}
    for text in texts:
        name, has_value, value = text.partition("=")
        name = name.lower()
        if name not in OPTIONS:
            raise _unsupported(f"option {name}", OPTIONS)
        if name not in _APPLICABLE[kind]:
            raise _unsupported(f"option {name} on {kind}", _APPLICABLE[kind])
        options[name] = _option_value(name, value if has_value else None)
    return options


def _option_value(name: str, value: str | None) -> str | int | bool:
    if name in _FLAGS:
        if value not in (None, "0", "1"):
            raise _bad(f"option {name}: expected no value, 0 or 1", value)
        return value != "0"
    if value is None or value == "":
        raise _bad(f"option {name} needs a value")
    if name == "ipv6only":
        if value not in ("0", "1"):
            raise _bad("option ipv6only: expected 0 or 1", value)
        return value == "1"
    if name in _NUMBERS:
        if not value.isascii() or not value.isdigit() or len(value) > 9:
            raise _bad(f"option {name}: not a number", value)
        number = int(value)
        if name == "proxyport" and not 1 <= number <= 65535:
            raise _bad("option proxyport: not a port", value)
        return number
    if name == "proxyauth" and ":" not in value:
        raise _bad("option proxyauth: expected USER:PASS", value)
    return value  # bind, proxyauth


def _check_params(kind: str, params: list[str], text: str) -> None:
    expected = {"STDIO": 0, "UNIX-LISTEN": 1, "UNIX-CONNECT": 1, "PROXY": 3}.get(kind, 1 if kind.endswith("-LISTEN") else 2)
    if len(params) != expected or any(not param for param in params):
        raise _bad(f"{kind}: wrong number of parameters ({expected} expected)", text)
    if kind in ("UNIX-LISTEN", "UNIX-CONNECT") and len(os.fsencode(params[0])) > _SUN_PATH:
        # Refused here, as socat does, before any socket exists: the loop's
        # non-blocking connect got an OSError without errno for it, failed
        # each connection with a TypeError and exited 0 without fork.
        raise _bad(f"{kind}: path longer than {_SUN_PATH} bytes", params[0])
    if kind.endswith("-LISTEN") and kind != "UNIX-LISTEN":
        _port(params[0], text)
    elif kind in _FAMILY:
        _port(params[1], text)
    elif kind == "PROXY":
        from srt_launcher.relay import tunnel

        problem = tunnel.host_problem(params[1])
        if problem:  # HOST comes from ssh's %h, i.e. from a repository URL: hostile input
            raise _bad(f"PROXY: {problem}", params[1])
        _port(params[2], text)


def _port(text: str, where: str) -> int:
    # socat would take a service name too; sandbox tools pass numbers.
    if not text.isascii() or not text.isdigit() or len(text) > 5 or not 1 <= int(text) <= 65535:
        raise _bad("port must be a number from 1 to 65535", where)
    return int(text)


def _check_combination(command: Command) -> None:
    first, second = command.first, command.second
    if second.flag("fork") or (first.flag("fork") and (not first.listening or second.listening or second.stdio)):
        raise _unsupported("this use of fork", ("fork on a listening ADDRESS1 whose ADDRESS2 connects",))
    if first.stdio and second.stdio:
        raise _unsupported("STDIO on both sides", ADDRESS_TYPES)


# ---------------------------------------------------------------- running


def main(argv: list[str]) -> int:
    if argv[:1] in (["-h"], ["--help"]):
        os.write(1, HELP.encode())
        return 0
    try:
        command = parse(argv)
    except LauncherError as err:
        return _report(err)
    cleanup = _Cleanup()
    _signal.signal(_signal.SIGPIPE, _signal.SIG_IGN)
    for signum in _TERMINATING_SIGNALS:
        _signal.signal(signum, cleanup.terminate)
    try:
        return run(command, cleanup)
    except LauncherError as err:
        return _report(err)
    finally:
        cleanup.run()


def _report(err: LauncherError) -> int:
    write_stderr(message(err, PROGRAM))
    return err.exit_code


class _Cleanup:
    """The UNIX-LISTEN socket files this process created (socat removes them when it closes).

    Every one of them: both addresses may be UNIX-LISTEN, and a file left
    behind makes the next listener on that path fail to bind.
    """

    def __init__(self) -> None:
        self.files: list[tuple[str, tuple[int, int]]] = []

    def created(self, path: str) -> None:
        found = os.lstat(path)
        self.files.append((path, (found.st_dev, found.st_ino)))

    def run(self) -> None:
        files, self.files = self.files, []
        for path, identity in files:
            try:
                found = os.lstat(path)
                if (found.st_dev, found.st_ino) == identity:  # a file put there since is not ours
                    os.unlink(path)
            except OSError:
                pass

    def terminate(self, signum: int, _frame: object) -> None:
        self.run()
        os._exit(128 + signum)


def run(command: Command, cleanup: _Cleanup) -> int:
    first, second = command.first, command.second
    if first.listening and not second.listening and not second.stdio:
        return _serve(command, cleanup)
    ends = []
    for address in (first, second):
        ends.append(_open(address, cleanup))
    from srt_launcher.relay.pump import pump

    (left_in, left_out), (right_in, right_out) = ends
    pump(left_in, left_out, right_in, right_out, linger=command.linger)
    return 0


def _serve(command: Command, cleanup: _Cleanup) -> int:
    """A listener in front of a connector: the relay event loop."""
    from srt_launcher.relay import loop

    first = command.first
    listener = _listen(first, cleanup)
    once = not first.flag("fork")
    wake_r, wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    _signal.set_wakeup_fd(wake_w)  # a signal just before epoll_wait blocks still ends us at once
    loop.raise_open_files_limit()
    client_options = _SocketOptions(first)
    relay = loop.Loop(
        listener,
        _upstream(command.second),
        once=once,
        linger=command.linger,
        wake_fd=wake_r,
        prepare_client=client_options if client_options.needed else None,
        program=PROGRAM,
    )
    return relay.run()


def _open(address: Address, cleanup: _Cleanup) -> tuple[int, int]:
    """Open one end for the pump: (fd to read, fd to write)."""
    if address.stdio:
        return 0, 1
    if address.listening:
        listener = _listen(address, cleanup)
        try:
            fd = listener._accept()[0]
        except OSError as err:
            raise LauncherError.from_os("accept", address.text, err, FAILED) from None
        listener.close()
        sock = _socket.socket(listener.family, _socket.SOCK_STREAM, 0, fd)
        options = _SocketOptions(address)
        if options.needed:
            try:
                options(sock)
            except OSError as err:  # keepidle=99999: EINVAL, socat's one-line error rather than a traceback
                sock.close()
                raise LauncherError.from_os("setsockopt", address.text, err, FAILED) from None
    else:
        sock = _connect(address)
    fd = sock.detach()
    return fd, fd


# ---------------------------------------------------------------- sockets


def _listen(address: Address, cleanup: _Cleanup) -> _socket.socket:
    backlog = int(address.options.get("backlog", DEFAULT_BACKLOG))
    if address.kind == "UNIX-LISTEN":
        path = address.params[0]
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
        if address.flag("unlink-early"):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as err:
                sock.close()
                raise LauncherError.from_os("unlink", path, err, FAILED) from None
        target: object = path
    else:
        family, target = _listen_address(address)
        sock = _socket.socket(family, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
        if family == _socket.AF_INET6 and "ipv6only" in address.options:
            sock.setsockopt(_socket.IPPROTO_IPV6, _socket.IPV6_V6ONLY, int(bool(address.options["ipv6only"])))
    # Held from bind until the file is recorded: a SIGTERM in between would
    # leave a socket file nobody removes.
    _signal.pthread_sigmask(_signal.SIG_BLOCK, _TERMINATING_SIGNALS)
    try:
        if address.flag("reuseaddr"):
            sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
        sock.bind(target)
        if address.kind == "UNIX-LISTEN":
            cleanup.created(address.params[0])
    except OSError as err:
        sock.close()
        raise LauncherError.from_os("bind", _shown(target), err, FAILED) from None
    finally:
        _signal.pthread_sigmask(_signal.SIG_UNBLOCK, _TERMINATING_SIGNALS)
    try:
        sock.listen(backlog)
    except OSError as err:
        sock.close()
        raise LauncherError.from_os("listen", _shown(target), err, FAILED) from None
    return sock


def _listen_address(address: Address) -> tuple[int, tuple]:
    port = int(address.params[0])
    kind = address.kind
    if "bind" in address.options:
        family = {"TCP-LISTEN": _socket.AF_UNSPEC, "TCP4-LISTEN": _socket.AF_INET}.get(kind, _socket.AF_INET6)
        return _resolve(str(address.options["bind"]), port, family, address.text)
    if kind == "TCP6-LISTEN":
        return _socket.AF_INET6, ("::", port)
    return _socket.AF_INET, ("0.0.0.0", port)  # socat 1.7 listens on IPv4 unless told otherwise


def _resolve(host: str, port: int, family: int, where: str) -> tuple[int, tuple]:
    """The first address the resolver gives, as socat 1.7 takes it."""
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        found = _socket.getaddrinfo(host, port, family, _socket.SOCK_STREAM)
    except OSError as err:
        raise LauncherError("resolve", host, str(err.args[-1]) if err.args else str(err), FAILED) from None
    except UnicodeError:
        # getaddrinfo encodes a name with IDNA first, which raises for an
        # empty or over-long label (a..b) or a byte that is not UTF-8: a
        # hostile name on the command line must be socat's one-line error,
        # not a traceback (SPEC §2.7, §8).
        raise LauncherError("resolve", host, "not a valid host name", FAILED) from None
    if not found:
        raise LauncherError("resolve", host, "no address", FAILED)
    return found[0][0], found[0][4]


def _shown(target: object) -> str:
    if isinstance(target, tuple):
        host, port = target[0], target[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return str(target)


class _SocketOptions:
    """keepalive, keepidle, keepintvl, keepcnt, nodelay: set on a socket (upstream, or accepted)."""

    def __init__(self, address: Address) -> None:
        names = ("keepalive", "keepidle", "keepintvl", "keepcnt", "nodelay")
        self.options = {name: address.options[name] for name in names if name in address.options}
        self.needed = bool(self.options)

    def __call__(self, sock: _socket.socket) -> None:
        options = self.options
        if "nodelay" in options:
            sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, int(bool(options["nodelay"])))
        if "keepalive" in options:
            sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_KEEPALIVE, int(bool(options["keepalive"])))
        for name, level in (
            ("keepidle", _socket.TCP_KEEPIDLE), ("keepintvl", _socket.TCP_KEEPINTVL), ("keepcnt", _socket.TCP_KEEPCNT)
        ):  # fmt: skip
            if name in options:
                sock.setsockopt(_socket.IPPROTO_TCP, level, int(options[name]))


def _connect_target(address: Address) -> tuple[int, object, str | None]:
    """(family, address to connect to, HOST:PORT to tunnel to through a proxy or None)."""
    if address.kind == "UNIX-CONNECT":
        return _socket.AF_UNIX, address.params[0], None
    if address.kind == "PROXY":
        proxy_host, host, port = address.params
        proxy_port = int(address.options.get("proxyport", DEFAULT_PROXY_PORT))
        family, target = _resolve(proxy_host, proxy_port, _socket.AF_UNSPEC, address.text)
        return family, target, f"{host}:{port}"
    family, target = _resolve(address.params[0], int(address.params[1]), _FAMILY[address.kind], address.text)
    return family, target, None


def _upstream(address: Address):  # type: ignore[no-untyped-def]
    """The connecting address as the relay loop's upstream."""
    from srt_launcher.relay import loop

    family, target, tunnel_to = _connect_target(address)
    options = _SocketOptions(address)
    bind = _bind_address(address, family)

    class SocatUpstream(loop.Upstream):
        def prepare(self, sock: _socket.socket) -> None:
            _prepare(sock, address, options, bind)

    upstream = SocatUpstream(family, target, _shown(target))
    if tunnel_to is not None:
        from srt_launcher.relay import tunnel

        auth = address.options.get("proxyauth")
        upstream.handshake = lambda: tunnel.TunnelHandshake(tunnel_to, "PROXY", _shown(target), auth)  # type: ignore[assignment]
    return upstream


def _bind_address(address: Address, family: int) -> tuple | None:
    """``bind=HOST[:PORT]`` (``[V6]:PORT`` for an IPv6 literal with a port) as a local address."""
    value = address.options.get("bind")
    if value is None or family == _socket.AF_UNIX:
        return None
    text = str(value)
    if text.startswith("[") and "]" in text:
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, ""  # a name, an IPv4 address or a bare IPv6 literal
    if port and (not port.isascii() or not port.isdigit() or int(port) > 65535):
        raise _bad("option bind: bad port", text)
    return _resolve(host, int(port or 0), family, address.text)[1]


def _prepare(sock: _socket.socket, address: Address, options: _SocketOptions, bind: tuple | None) -> None:
    if address.flag("reuseaddr"):
        sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
    if options.needed:
        options(sock)
    if sock.family == _socket.AF_INET6 and "ipv6only" in address.options:
        sock.setsockopt(_socket.IPPROTO_IPV6, _socket.IPV6_V6ONLY, int(bool(address.options["ipv6only"])))
    if bind is not None:
        sock.bind(bind)


def _connect(address: Address) -> _socket.socket:
    """A blocking connect (and CONNECT exchange for PROXY), for the pump."""
    family, target, tunnel_to = _connect_target(address)
    sock = _socket.socket(family, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        _prepare(sock, address, _SocketOptions(address), _bind_address(address, family))
        sock.connect(target)
    except OSError as err:
        sock.close()
        raise LauncherError.from_os("connect", _shown(target), err, FAILED) from None
    if tunnel_to is not None:
        from srt_launcher.relay import tunnel

        try:
            tunnel.open_tunnel(sock, tunnel_to, "PROXY", _shown(target), address.options.get("proxyauth"))  # type: ignore[arg-type]
        except LauncherError as err:
            sock.close()
            err.exit_code = FAILED
            raise
    return sock
