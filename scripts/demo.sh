#!/usr/bin/env bash
# make demo: one sandboxed command whose output shows the isolation.
set -euo pipefail
launcher=$(realpath "${1:-.venv/bin/srt-launcher}")

workload='
echo "whoami inside:   $(id)"
echo "processes seen:  $(ls /proc | grep -E "^[0-9]+$" | tr "\n" " ")(the host has $HOST_PROCS)"
echo "interfaces:      $(awk -F: "NR>2 {print \$1}" /proc/net/dev | tr -d " " | tr "\n" " ")(the host has $HOST_IFACES)"
echo "capabilities:    $(grep CapEff /proc/self/status | tr -s "\t" " ")"
echo "seccomp mode:    $(grep ^Seccomp: /proc/self/status | cut -f2)"
if { echo pwned > /etc/srt-launcher-demo; } 2>/tmp/err; then echo "write to /etc:   ALLOWED (unexpected)"; else echo "write to /etc:   refused ($(sed "s/.*: //" /tmp/err))"; fi
echo scratch > /tmp/scratch && echo "write to /tmp:   ok (a private tmpfs, gone after exit)"
python3 -c "import socket; socket.socket(socket.AF_UNIX)" 2>/dev/null && echo "AF_UNIX socket:  allowed" || echo "AF_UNIX socket:  refused by the seccomp filter"
'

echo "== srt-launcher run, as $(id -un) (uid $(id -u)) =="
echo "\$ srt-launcher run --unshare-net --seccomp-unix-block --ro-bind / / --proc /proc --dev /dev --tmpfs /tmp -- /bin/sh -c ..."
"$launcher" run --unshare-net --seccomp-unix-block \
  --ro-bind / / --proc /proc --dev /dev --tmpfs /tmp \
  --setenv HOST_PROCS "$(ls /proc | grep -cE '^[0-9]+$')" --setenv HOST_IFACES "$(awk -F: 'NR>2 {print $1}' /proc/net/dev | tr -d ' ' | tr '\n' ' ')" \
  -- /bin/sh -c "$workload"

if [ "$(id -u)" = 0 ] && command -v setpriv >/dev/null; then
  echo
  echo "== the same as an unprivileged user (uid 65534, through a user namespace) =="
  if setpriv --reuid=65534 --regid=65534 --clear-groups "$launcher" run --ro-bind / / -- /bin/true 2>/dev/null; then
    (cd / && setpriv --reuid=65534 --regid=65534 --clear-groups "$launcher" run --unshare-net --seccomp-unix-block \
      --ro-bind / / --proc /proc --dev /dev --tmpfs /tmp \
      --setenv HOST_PROCS "$(ls /proc | grep -cE '^[0-9]+$')" --setenv HOST_IFACES "$(awk -F: 'NR>2 {print $1}' /proc/net/dev | tr -d ' ' | tr '\n' ' ')" \
      -- /bin/sh -c "$workload")
  else
    echo "(skipped: uid 65534 cannot reach $launcher from here; the tests use a world-readable copy)"
  fi
fi
