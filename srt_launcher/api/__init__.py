"""The Python API for services (SPEC §9); its public names are ``srt_launcher``'s.

Modules, one idea each:

- ``sandbox``   :class:`Sandbox` (description, ``for_executable``, ``run``, ``run_async``, ``popen``), :class:`Relay`
- ``mounts``    the filesystem operations (Bind, RoBind, DevBind, Tmpfs, Dev, Proc, Dir, Symlink, File)
- ``limits``    :class:`Limits`, the rlimits under readable names
- ``result``    :class:`Result`, :class:`Cause`, :class:`SandboxError`
- ``process``   :class:`SandboxProcess`, popen's handle
- ``session``   one launch seen from the caller: streams, caps, deadlines, the verdict
- ``client``    the caller's side of the launcher process (start, replace, requests)
- ``launcher``  the launcher process itself (imports only the launch path)
- ``wire``      what client and launcher say to each other
- ``probe``     :func:`probe`, the host probes run by the launcher process
- ``elf``       the dynamic loader's view of a binary (``for_executable``)

Importing this package imports none of them: the launcher process imports
``launcher`` and ``wire`` only.
"""
