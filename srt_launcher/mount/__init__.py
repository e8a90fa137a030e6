"""Filesystem setup of the sandbox: mount operations, mountinfo, the pivot_root sequence."""
