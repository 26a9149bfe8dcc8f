#!/usr/bin/env bash
# Run the demo: scheduler + exporter in one process on a SQLite file, with example tasks.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh none
exec .venv/bin/schedctl demo "$@"
