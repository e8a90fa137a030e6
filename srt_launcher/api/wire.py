"""What the API's client and its launcher process say to each other.

One SOCK_SEQPACKET socket pair joins a service's process (the client) and
its launcher process; every message is one ``marshal``'d tuple (built in:
nothing to import, no code in the data), with descriptors as SCM_RIGHTS.
Only the client holds the other end, so the launcher trusts its messages as
it trusts the caller's own code.

Client → launcher, each with a fresh reply socket as the first descriptor::

    (PROTOCOL, "launch", description, argv, timeout, stdio)
        stdio "pipes": the launcher makes stdin, stdout and stderr pipes;
        stdio "fds": three more descriptors follow, the workload's 0, 1, 2
    (PROTOCOL, "probe")
    (PROTOCOL, "large")  the real message is in a memfd, the last descriptor
                         (a File with megabytes of data would not fit in one datagram)

Launcher → client, once, on the reply socket::

    (True, stub_pid)  descriptors: status pipe (read end), a pidfd of the
                      stub, then for "pipes" stdin (write end), stdout and
                      stderr (read ends)
    (False, step, value, message)   the launch could not even be started
    (True, outcomes, route)         answer to "probe" (marshal'd outcomes)

``description`` is the engine's :class:`srt_launcher.sandbox.Sandbox` as a
tuple (:func:`encode`); equal descriptions encode to equal bytes, which the
launcher uses as the key of its prepared sandboxes.
"""

import marshal

from srt_launcher import sandbox

PROTOCOL = 1
# Version 2: no back-references, so equal values always give equal bytes
# (later versions share repeated objects by identity).
MARSHAL_VERSION = 2
LARGE = 32 * 1024  # above this a request travels in a memfd
MAX_FDS = 8

# The slots a description carries; the rest (the command, the timeout, every
# caller descriptor) belong to one launch, not to the description.
_PER_LAUNCH = frozenset(
    (
        "command",
        "timeout",
        "json_status_fd",
        "info_fd",
        "sync_fd",
        "block_fd",
        "userns_block_fd",
        "userns_fd",
        "userns2_fd",
        "pidns_fd",
        "command_fd",
        "lock_files",
        "inherit_fds",
        "source_ids",
    )
)
FIELDS = tuple(name for name in sandbox.Sandbox.__slots__ if name not in _PER_LAUNCH)
_MOUNT_FIELDS = sandbox.Mount.__slots__


def encode(box: sandbox.Sandbox) -> bytes:
    """The description part of ``box`` as bytes (deterministic)."""
    values = []
    for name in FIELDS:
        value = getattr(box, name)
        if name == "mounts":
            value = tuple(tuple(getattr(mount, field) for field in _MOUNT_FIELDS) for mount in value)
        elif name == "rlimits":
            value = tuple(sorted(value.items()))
        elif name in ("env", "seccomp", "relays"):
            value = tuple(value)
        elif name == "caps":
            value = tuple(sorted(value))
        values.append(value)
    return marshal.dumps(tuple(values), MARSHAL_VERSION)


def decode(data: bytes) -> sandbox.Sandbox:
    """The engine Sandbox of :func:`encode` (no command yet); ValueError if malformed."""
    try:
        values = marshal.loads(data)
    except (EOFError, ValueError, TypeError) as err:
        raise ValueError(f"malformed description: {err}") from None
    if not isinstance(values, tuple) or len(values) != len(FIELDS):
        raise ValueError("malformed description: wrong number of fields")
    box = sandbox.Sandbox()
    for name, value in zip(FIELDS, values):
        if name == "mounts":
            value = [_mount(item) for item in value]
        elif name == "rlimits":
            value = dict(value)
        elif name in ("env", "seccomp", "relays"):
            value = list(value)
        elif name == "caps":
            value = frozenset(value)
        setattr(box, name, value)
    return box


def _mount(fields: tuple) -> sandbox.Mount:
    if not isinstance(fields, tuple) or len(fields) != len(_MOUNT_FIELDS):
        raise ValueError("malformed description: a mount")
    values = dict(zip(_MOUNT_FIELDS, fields))
    if values["fd"] is not None:
        raise ValueError("malformed description: a mount names a descriptor")
    kind, dest, source = values.pop("kind"), values.pop("dest"), values.pop("source")
    return sandbox.Mount(kind, dest, source, **values)


def host_paths(box: sandbox.Sandbox) -> list[str]:
    """Every host path a launch of ``box`` resolves or pins: bind and overlay
    sources, relays' Unix sockets."""
    paths = []
    for mount in box.mounts:
        if mount.kind in sandbox.BIND_KINDS or mount.kind in sandbox.OVERLAY_KINDS:
            paths += [path for path in (mount.source, mount.work, *mount.lower) if path is not None]
    paths += [socket_path for _, socket_path in box.relays]
    return paths
