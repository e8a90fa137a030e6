"""A host relay in a PID namespace whose /proc belongs to the namespace above.

    unshare --user --map-root-user --pid --fork --mount --mount-proc \\
        python -I foreign_proc.py SOCKET RELAY_ARGV...

This runs as PID 1 of an outer namespace that has its own /proc (so its pid
numbers can be chosen through ns_last_pid, as root of our own user
namespace). It starts the relay (RELAY_ARGV, listening on SOCKET) in an
inner PID namespace without remounting /proc there, as ``unshare --pid
--fork`` does without ``--mount-proc``, and lines the numbers up:

- the relay is pid RELAY in the inner namespace, and an unrelated outer
  process is pid RELAY in the outer one, which is how /proc names it;
- once the relay serves, the inner namespace gets an unrelated ``victim``
  (pid VICTIM there) and that outer process a child (pid VICTIM in the
  outer namespace).

A relay that trusted this /proc would take the outer child's number for one
of its own children and, on SIGTERM, kill the victim. Prints one JSON
object: ``{"relay": returncode, "victim": returncode or null if alive}``.
"""

import json
import os
import signal
import socket
import subprocess
import sys

RELAY = 50
VICTIM = 100


def set_last_pid(pid: int) -> None:
    # Acts on the writer's own PID namespace, whichever /proc it goes through.
    with open("/proc/sys/kernel/ns_last_pid", "w") as handle:
        handle.write(str(pid))


def expect_pid(what: str, pid: int, wanted: int) -> None:
    if pid != wanted:
        raise SystemExit(f"foreign_proc: {what} got pid {pid}, not {wanted} (something else forked)")


class OuterNamesake:
    """The outer process numbered RELAY; it forks a child when told."""

    def __init__(self) -> None:
        go_read, self.go = os.pipe()
        self.forked, forked_write = os.pipe()
        set_last_pid(RELAY - 1)
        self.pid = os.fork()
        if self.pid == 0:
            os.close(self.go)
            os.close(self.forked)
            os.read(go_read, 1)
            child = os.fork()
            if child == 0:
                signal.pause()
                os._exit(0)
            os.write(forked_write, str(child).encode())
            os.waitpid(child, 0)
            os._exit(0)
        os.close(go_read)
        os.close(forked_write)
        expect_pid("the outer namesake of the relay", self.pid, RELAY)

    def fork_child(self, pid: int) -> None:
        """Make it fork a child numbered ``pid``; return once the child exists."""
        set_last_pid(pid - 1)
        os.write(self.go, b".")
        expect_pid("the namesake's child", int(os.read(self.forked, 32)), pid)


def outer(socket_path: str, relay_argv: list[str]) -> None:
    namesake = OuterNamesake()
    inner = subprocess.Popen(
        ["unshare", "--pid", "--fork", sys.executable, "-I", __file__, "--inner", socket_path, *relay_argv],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        if inner.stdout.readline() != "victim started\n":
            raise SystemExit(f"foreign_proc: the inner namespace failed (status {inner.wait()})")
        namesake.fork_child(VICTIM)
        inner.stdin.write("signal the relay\n")
        inner.stdin.close()
        print(inner.stdout.read(), end="")
        if inner.wait() != 0:
            raise SystemExit(f"foreign_proc: the inner namespace failed (status {inner.returncode})")
    finally:
        os.kill(namesake.pid, signal.SIGKILL)  # its child, as PID 1's orphan, dies with this namespace


def inner(socket_path: str, relay_argv: list[str]) -> None:
    set_last_pid(RELAY - 1)
    relay = subprocess.Popen(relay_argv, stdout=subprocess.PIPE)
    victim = None
    try:
        expect_pid("the relay", relay.pid, RELAY)
        if relay.stdout.read() != b"\n":  # readiness byte, then EOF
            raise SystemExit(f"foreign_proc: the relay did not start (status {relay.wait()})")
        with socket.socket(socket.AF_UNIX) as client:  # serving: it has noted what it inherited
            client.connect(socket_path)
            client.sendall(b"ping")
            client.shutdown(socket.SHUT_WR)
            if client.recv(4) != b"ping":
                raise SystemExit("foreign_proc: no echo through the relay")
        set_last_pid(VICTIM - 1)
        victim = subprocess.Popen(["sleep", "60"])
        expect_pid("the victim", victim.pid, VICTIM)
        print("victim started", flush=True)
        sys.stdin.readline()  # the outer child numbered VICTIM exists by now
        relay.send_signal(signal.SIGTERM)
        status = relay.wait(timeout=30)
        print(json.dumps({"relay": status, "victim": victim.poll()}))
    finally:
        for process in (relay, victim):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()


if __name__ == "__main__":
    if sys.argv[1] == "--inner":
        inner(sys.argv[2], sys.argv[3:])
    else:
        outer(sys.argv[1], sys.argv[2:])
