"""The sandbox's network namespace (SPEC §2.5): only ``lo``, brought UP.

A fresh network namespace holds ``lo`` DOWN and nothing else. Setting
IFF_UP is all it takes: the kernel then assigns 127.0.0.1/8 and, when IPv6 is
enabled, ::1 by itself. One SIOCSIFFLAGS ioctl does that; pyroute2 would cost
its imports on a path every agent shell command takes (SPEC §4), and
``socket`` its enum building, where ``_socket`` costs next to nothing.
"""


import fcntl
import sys

import _socket

from srt_launcher.errors import LauncherError

_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
# struct ifreq: char ifr_name[IFNAMSIZ=16], then a 24-byte union whose first
# member, for these two ioctls, is the native-endian short ifr_flags.
_IFNAMSIZ = 16
_IFREQ_SIZE = 40


def bring_up_loopback() -> None:
    """Set IFF_UP on ``lo`` of the current network namespace."""
    try:
        probe = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM | _socket.SOCK_CLOEXEC)
    except OSError as err:
        raise LauncherError.from_os("bring up loopback", "socket", err) from None
    try:
        _set_up(probe.fileno(), b"lo")
    except OSError as err:
        raise LauncherError.from_os("bring up loopback", "lo", err) from None
    finally:
        probe.close()


def _set_up(fd: int, name: bytes) -> None:
    request = bytearray(_IFREQ_SIZE)
    request[: len(name)] = name
    fcntl.ioctl(fd, _SIOCGIFFLAGS, request)  # fills the buffer in place
    flags = int.from_bytes(request[_IFNAMSIZ : _IFNAMSIZ + 2], sys.byteorder)
    if flags & _IFF_UP:
        return
    request[_IFNAMSIZ : _IFNAMSIZ + 2] = (flags | _IFF_UP).to_bytes(2, sys.byteorder)
    fcntl.ioctl(fd, _SIOCSIFFLAGS, request)

