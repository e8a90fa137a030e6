"""The remount path for kernels without mount_setattr(2) (before 5.12): SPEC §2.4.

The launcher adds ro/nosuid/nodev to a recursive bind with one
mount_setattr(AT_RECURSIVE) call; where the kernel lacks it, it reads
mountinfo and remounts the bind and each submount (bubblewrap's
bind_mount()). That fallback never runs on this kernel through the launcher,
so it is driven here directly, in a real mount namespace made by unshare(1):
as root, and as uid 65534 in a user namespace (where the copied mounts are
locked, as they are for an unprivileged launch).
"""

from __future__ import annotations

import json
import subprocess

import pytest

from pathlib import Path

from conftest import UNPRIVILEGED_GID, UNPRIVILEGED_UID

_SCRIPT = r"""
import json, os, sys, tempfile
from srt_launcher import kernel
from srt_launcher.mount import mountinfo, ops

add_flags = {"ro": ops.BIND_READ_ONLY, "rw": ops.BIND_READ_WRITE}[sys.argv[1]]
kernel.mount(None, "/", None, kernel.MS_REC | kernel.MS_PRIVATE)
base = tempfile.mkdtemp(dir="/tmp")
kernel.mount("tmpfs", base, "tmpfs", 0, "mode=0755")
src, dst = base + "/src", base + "/dst"
for path in (src, dst, src + "/rw", src + "/ro"):
    os.mkdir(path)
kernel.mount("tmpfs", src + "/rw", "tmpfs", 0, "mode=0755")
os.mkdir(src + "/rw/nested")
kernel.mount("tmpfs", src + "/rw/nested", "tmpfs", 0)
kernel.mount("tmpfs", src + "/ro", "tmpfs", kernel.MS_RDONLY)
kernel.mount(src, dst, None, kernel.MS_BIND | kernel.MS_REC)
proc_fd = os.open("/proc", os.O_PATH | os.O_DIRECTORY)
ops.remount_tree_by_mountinfo(ops.MountContext(proc_fd, None), dst, add_flags, "bind", dst)
flags = {}
for entry in mountinfo.read(proc_fd):
    if entry.mount_point == dst or entry.mount_point.startswith(dst + "/"):
        flags[entry.mount_point[len(dst):] or "/"] = entry.flags
print(json.dumps(flags))
"""

CALLERS = ("root", "unprivileged")


@pytest.fixture(params=CALLERS)
def remounted_flags(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """Run the fallback as this caller; the interpreter is the venv's beside the command it runs."""
    caller = request.param
    command = request.getfixturevalue("root_argv" if caller == "root" else "unprivileged_argv")[0]
    python = str(Path(command).parent / "python")
    return lambda kind: _remounted_flags(caller, python, kind)


def _remounted_flags(caller: str, python: str, kind: str) -> dict[str, int]:
    unshare = ["unshare", "--mount"] if caller == "root" else ["unshare", "--user", "--map-root-user", "--mount"]
    kwargs = {}
    if caller == "unprivileged":
        kwargs = {"user": UNPRIVILEGED_UID, "group": UNPRIVILEGED_GID, "extra_groups": []}
    result = subprocess.run(
        [*unshare, python, "-I", "-c", _SCRIPT, kind], capture_output=True, text=True, timeout=60, cwd="/", **kwargs
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


MS_RDONLY, MS_NOSUID, MS_NODEV = 0x1, 0x2, 0x4


def test_fallback_makes_the_bind_and_every_submount_read_only(remounted_flags):
    flags = remounted_flags("ro")
    assert sorted(flags) == ["/", "/ro", "/rw", "/rw/nested"]
    for path, value in flags.items():
        assert value & (MS_RDONLY | MS_NOSUID | MS_NODEV) == MS_RDONLY | MS_NOSUID | MS_NODEV, path


def test_fallback_keeps_a_read_only_submount_read_only_under_a_writable_bind(remounted_flags):
    flags = remounted_flags("rw")
    assert flags["/ro"] & MS_RDONLY
    for path in ("/", "/rw", "/rw/nested"):
        assert not flags[path] & MS_RDONLY, path
        assert flags[path] & (MS_NOSUID | MS_NODEV) == MS_NOSUID | MS_NODEV, path
