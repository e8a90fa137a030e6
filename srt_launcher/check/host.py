"""What a host's files say about it, read under a root directory.

Only the diagnosis reads these, after a probe has failed for real: they
name the cause, they never decide whether something works. ``root`` is a
parameter so that tests can point it at a fake tree: AppArmor's restriction
and WSL 1 cannot be created on the test machine, but the files they leave
can.
"""

from __future__ import annotations

import os


class Host:
    def __init__(self, root: str = "/") -> None:
        self.root = root

    def path(self, relative: str) -> str:
        return os.path.join(self.root, relative.lstrip("/"))

    def text(self, relative: str) -> str | None:
        try:
            with open(self.path(relative), encoding="utf-8", errors="replace") as handle:
                return handle.read().strip()
        except OSError:
            return None

    def sysctl(self, name: str) -> str | None:
        """``kernel.foo_bar`` → the content of proc/sys/kernel/foo_bar, or None if absent."""
        return self.text("proc/sys/" + name.replace(".", "/"))

    def apparmor(self) -> bool:
        """AppArmor is the active LSM (its securityfs directory, or the module parameter)."""
        if os.path.isdir(self.path("sys/kernel/security/apparmor")):
            return True
        return self.text("sys/module/apparmor/parameters/enabled") == "Y"

    def apparmor_restricts_userns(self) -> bool:
        """Ubuntu 23.10+: unprivileged user namespaces get no capabilities without a profile allowing ``userns``."""
        return self.sysctl("kernel.apparmor_restrict_unprivileged_userns") == "1"

    def wsl(self) -> int | None:
        """1 or 2 under Windows' WSL, else None.

        WSL 1 has no Linux kernel: its /proc/version names Microsoft's
        translation layer ("4.4.0-19041-Microsoft"). WSL 2 runs a real
        kernel whose release says so ("5.15.153.1-microsoft-standard-WSL2";
        early ones "4.19.104-microsoft-standard").
        """
        version = self.text("proc/version") or self.text("proc/sys/kernel/osrelease") or ""
        if "microsoft" not in version.lower():
            return None
        if "WSL2" in version or "microsoft-standard" in version.lower():
            return 2
        return 1
