#!/usr/bin/env bash
# Install what schedctl's demo and tests need on a fresh Debian/Ubuntu machine:
# Debian packages (Prometheus, Alertmanager, PostgreSQL binaries, PgBouncer, Chromium and its
# WebDriver for the status page's browser tests) when missing, and a
# virtualenv in .venv with schedctl and its test dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."

want_system="${1:-all}"   # "all" (tests) or "none" (demo needs no system packages)
if [[ "$want_system" == "all" ]]; then
    need=()
    command -v promtool >/dev/null 2>&1 || need+=(prometheus)
    command -v prometheus-alertmanager >/dev/null 2>&1 || need+=(prometheus-alertmanager)
    compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need+=(postgresql)
    # Debian installs it in /usr/sbin, not on every user's PATH (the tests look there too).
    command -v pgbouncer >/dev/null 2>&1 || [[ -x /usr/sbin/pgbouncer ]] || need+=(pgbouncer)
    # The browser tests drive these two through selenium (tests/exporter/browser.py).
    [[ -x /usr/bin/chromium ]] || need+=(chromium)
    [[ -x /usr/bin/chromedriver ]] || need+=(chromium-driver)
    if ((${#need[@]})); then
        echo "bootstrap: installing Debian packages: ${need[*]}" >&2
        sudo_cmd=()
        [[ "$(id -u)" -ne 0 ]] && sudo_cmd=(sudo)
        "${sudo_cmd[@]}" apt-get update -q
        DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends "${need[@]}"
    fi
fi

python=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
    echo "bootstrap: creating .venv with $($python --version)" >&2
    "$python" -m venv .venv
fi
extras=""
[[ "$want_system" == "all" ]] && extras="[test]"
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".${extras}"
