"""srt-launcher: a Linux sandbox launcher (bubblewrap + socat + seccomp helper in one command).

The Python API for services (SPEC §9)::

    import srt_launcher
    box = srt_launcher.Sandbox.for_executable("/usr/bin/ffprobe", inputs=[path], timeout=20)
    result = box.run(["/usr/bin/ffprobe", path])

Every public name below loads on first use (module ``__getattr__``): every
launch of the ``srt-launcher`` command imports this package, so nothing may
be imported here (SPEC §4).
"""

__version__ = "0.1.0"

# Public name → the module that defines it.
_PUBLIC = {
    "Sandbox": "srt_launcher.api.sandbox",
    "Relay": "srt_launcher.api.sandbox",
    "Limits": "srt_launcher.api.limits",
    "Bind": "srt_launcher.api.mounts",
    "RoBind": "srt_launcher.api.mounts",
    "DevBind": "srt_launcher.api.mounts",
    "Tmpfs": "srt_launcher.api.mounts",
    "Dev": "srt_launcher.api.mounts",
    "Proc": "srt_launcher.api.mounts",
    "Dir": "srt_launcher.api.mounts",
    "Symlink": "srt_launcher.api.mounts",
    "File": "srt_launcher.api.mounts",
    "Result": "srt_launcher.api.result",
    "Cause": "srt_launcher.api.result",
    "LaunchError": "srt_launcher.api.result",
    "SandboxError": "srt_launcher.api.result",
    "SandboxProcess": "srt_launcher.api.process",
    "probe": "srt_launcher.api.probe",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> object:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'srt_launcher' has no attribute {name!r}")
    value = getattr(__import__(module, fromlist=[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
