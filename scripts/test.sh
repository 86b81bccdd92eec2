#!/usr/bin/env bash
# The whole test suite: static checks, then unit, property and (as root) integration tests.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check supervisor tests bench
.venv/bin/mypy supervisor tests bench
.venv/bin/python -m pytest "$@"
