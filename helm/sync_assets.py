"""Copy the single-source alert rules (alerts/) and dashboards (dashboards/) into the Helm chart.

Run `python helm/sync_assets.py` after changing either; `--check` only reports drift (exit 1).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

__all__ = ["CHART_FILES", "dashboard_files", "plan", "rule_files", "sync"]

REPO = Path(__file__).resolve().parent.parent
CHART_FILES = Path("helm/schedctl/files")
RULES_DIR = "rules"
DASHBOARDS_DIR = "dashboards"


def rule_files(alerts_dir: Path) -> list[Path]:
    """The Prometheus rule files directly in ``alerts_dir``: YAML documents with ``groups``.

    Promtool test files (``rule_files`` + ``tests``) and the Alertmanager example have no
    ``groups`` key, so they stay out of the chart.
    """
    found = []
    for path in sorted(alerts_dir.iterdir()):
        if not path.is_file() or path.suffix not in (".yml", ".yaml"):
            continue
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
        if isinstance(document, dict) and "groups" in document:
            found.append(path)
    return found


def dashboard_files(dashboards_dir: Path) -> list[Path]:
    """The committed Grafana dashboards: every ``*.json`` directly in ``dashboards_dir``."""
    return sorted(dashboards_dir.glob("*.json"))


def plan(repo: Path) -> dict[Path, bytes]:
    """Every file the chart's ``files/`` must hold, by path under it, with its exact bytes."""
    wanted: dict[Path, bytes] = {}
    for path in rule_files(repo / "alerts"):
        wanted[Path(RULES_DIR) / path.name] = path.read_bytes()
    for path in dashboard_files(repo / "dashboards"):
        wanted[Path(DASHBOARDS_DIR) / path.name] = path.read_bytes()
    return wanted


def _present(files_dir: Path) -> dict[Path, bytes]:
    present: dict[Path, bytes] = {}
    for sub in (RULES_DIR, DASHBOARDS_DIR):
        for path in sorted((files_dir / sub).glob("*")):
            if path.is_file():
                present[path.relative_to(files_dir)] = path.read_bytes()
    return present


def sync(repo: Path, *, check: bool = False) -> list[str]:
    """Make the chart's copies equal to the sources; return one line per difference.

    With ``check`` nothing is written: the differences are only reported.
    """
    files_dir = repo / CHART_FILES
    wanted = plan(repo)
    present = _present(files_dir)
    changes = []
    for rel, content in sorted(wanted.items()):
        if present.get(rel) == content:
            continue
        changes.append(f"{'update' if rel in present else 'add'} {CHART_FILES / rel}")
        if not check:
            (files_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            (files_dir / rel).write_bytes(content)
    for rel in sorted(present.keys() - wanted.keys()):
        changes.append(f"remove {CHART_FILES / rel}")
        if not check:
            (files_dir / rel).unlink()
    return changes


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="report drift and exit 1 instead of copying"
    )
    parser.add_argument("--repo", type=Path, default=REPO, help="repository root")
    args = parser.parse_args(argv)
    changes = sync(args.repo, check=args.check)
    for line in changes:
        print(line)
    if args.check and changes:
        print(
            "the chart's copies differ from alerts/ and dashboards/: run python helm/sync_assets.py"
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
