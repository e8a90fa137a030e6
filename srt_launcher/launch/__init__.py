"""The launch engine: a :class:`~srt_launcher.sandbox.Sandbox` in, a sandboxed process out.

The only code that enters namespaces. It knows no command line: ``run``,
the bubblewrap front end and the Python API all hand it the same description.

::

    stub (launch/stub.py)     the launcher's process: host PID and mount ns,
     │                        the sandbox's network ns (and user ns)
     ├─ relay :PORT           (relay/inside.py) host PID + mount ns, sandbox net ns;
     │                        forked before the PID namespace, so the workload can
     │                        neither see, signal nor trace it
     └─ PID 1 (launch/pid1.py) sandbox PID + mount ns: builds the root
         │                    (mount/root.py), then reaps and passes signals on
         └─ worker            rlimits, seccomp, execvp(COMMAND)

Stub:   refuse setuid/setgid → record stdout's tty and the cwd → SIGCHLD to
        default → NO_NEW_PRIVS, PDEATHSIG → resolve host sources, load
        seccomp programs, compute the environment → network (and user)
        namespace, lo up, relays → PID, IPC, UTS, cgroup namespaces →
        DUMPABLE=0 → fork PID 1 → status records, drop capabilities, wait
        (passing signals on), kill the relays, report how it ended.
PID 1:  PDEATHSIG again → setsid → new mount ns → hostname → the root and
        the second pivot → user-namespace switches → locks → the worker's
        capabilities → cwd → fork the worker → drop capabilities, close fds,
        reap (and time out) → the end record.
Worker: restore signals → close fds → umask → rlimits → seccomp → exec.

Three processes is the floor: entering a PID namespace needs a fork, and a
workload that is PID 1 would ignore SIGTERM. The mount namespace is made by
PID 1, not the stub: pivot_root moves the root of every process in the
namespace, and the stub stays in the host's.

Nothing is imported here: ``launch.signals`` is imported first on the launch
path, to block signals before the rest loads.
"""
