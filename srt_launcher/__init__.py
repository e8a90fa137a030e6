"""srt-launcher: a Linux sandbox launcher (bubblewrap + socat + seccomp helper in one command).

Kept empty on purpose: every launch imports this package, so anything here is
paid for on the launch path (SPEC §4).
"""
