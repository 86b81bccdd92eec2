#!/usr/bin/env bash
# Prepare this checkout to run: the Debian packages the supervisor and its tests use, and a
# virtual environment in .venv with the Python dependencies. Idempotent; safe to run every time.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "setup: run as root (the supervisor creates namespaces, cgroups and links)" >&2
  exit 2
fi

# Binaries the supervisor and the integration tests drive, with the Debian package that has each.
need=()
command -v dnsmasq >/dev/null || need+=(dnsmasq-base)
command -v nft >/dev/null || need+=(nftables)
[ -x /bin/busybox ] || need+=(busybox-static)
command -v unshare >/dev/null || need+=(util-linux)
command -v ip >/dev/null || need+=(iproute2)
# the fleet tests, `vsv stress --fleet` and bench/bench_fleet.py run their own NATS server
[ -x /usr/sbin/nats-server ] || command -v nats-server >/dev/null || need+=(nats-server)
# a library, not a binary: supervisor/guest/seccomp.py compiles the guests' filter with it (no
# `grep -q`: it would stop reading early, and ldconfig's SIGPIPE would fail the pipeline)
ldconfig -p | grep 'libseccomp\.so\.2 ' >/dev/null || need+=(libseccomp2)
python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv python3-pip)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
stamp=.venv/.vsv-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
  touch "$stamp"
fi
