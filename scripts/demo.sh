#!/usr/bin/env bash
# The main job: the supervisor in the foreground with the example guests and network, events
# scrolling on stdout. All host-side networking happens inside the sandbox network namespace
# "vsv-demo" (created if missing), so the host's own interfaces are never touched.
# Ctrl-C (or SIGTERM) shuts the guests down gracefully and leaves nothing behind.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
root=/var/lib/vsv/rootfs/busybox
.venv/bin/vsv rootfs "$root" >/dev/null
exec .venv/bin/vsv daemon \
  --state-dir /var/lib/vsv/demo \
  --run-dir /run/vsv-demo \
  --prefix vsv \
  --netns vsv-demo \
  --start examples/demo-nat.xml examples/web1-nat.xml examples/db1-nat.xml \
          examples/web1.xml examples/db1.xml \
  "$@"
