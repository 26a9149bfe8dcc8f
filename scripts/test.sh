#!/usr/bin/env bash
# The test command: installs everything the tests need, lints, then runs the whole suite
# (SQLite and a throwaway PostgreSQL, real promtool/Prometheus/Alertmanager, Helm rendering).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh all
echo "== ruff" >&2
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy --strict" >&2
.venv/bin/mypy
echo "== helm assets in sync with alerts/ and dashboards/" >&2
.venv/bin/python helm/sync_assets.py --check
echo "== pytest" >&2
exec .venv/bin/pytest -q -p no:cacheprovider "$@"
