"""docs/metrics.md, the metric and alert catalog, against the code, both ways.

- The `## Metrics` table lists exactly the families of exporter/catalog.py (what the exporter
  serves), with the same type and label names in the same order.
- The `## Alerts` table lists exactly the alerts of alerts/schedctl-rules.yml, with the same
  severity (for a task alert, the default its per-task severity template falls back to) and
  `for`, and links to the alert's heading in alerts/runbook.md.
- The `## OpenTelemetry (scheduler)` table lists exactly the instruments of scheduler_core/telemetry/otel.py.
- The `## SQL tables` table lists exactly the tables of scheduler_core/models.py.

No server or binary is needed: the files are read as they are.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.catalog import CATALOG, MetricSpec
from scheduler_core import models
from tests.alerts.severity import default_severity

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "metrics.md"
RULES = REPO / "alerts" / "schedctl-rules.yml"
RUNBOOK = REPO / "alerts" / "runbook.md"
OTEL = REPO / "scheduler_core" / "telemetry" / "otel.py"

NO_LABELS = "—"
SEVERITIES = {"critical", "warning", "info"}


def _table(heading: str) -> dict[str, list[str]]:
    """The body rows of the first table under ``## heading``: first cell -> the other cells."""
    text = "\n" + DOC.read_text(encoding="utf-8")
    _, found, rest = text.partition(f"\n## {heading}\n")
    assert found, f"{DOC.name} has no heading '## {heading}'"
    lines = [line for line in rest.split("\n## ", 1)[0].splitlines() if line.startswith("|")]
    assert len(lines) > 2, f"{DOC.name}: no table under '## {heading}'"
    assert re.fullmatch(r"\|( *:?-+:? *\|)+", lines[1]), f"{DOC.name}: bad table under {heading}"
    rows: dict[str, list[str]] = {}
    for line in lines[2:]:
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        assert len(cells) == lines[0].count("|") - 1, f"{DOC.name}: cell count of {line!r}"
        assert cells[0] not in rows, f"{DOC.name}: {cells[0]} has two rows under {heading}"
        assert all(cells), f"{DOC.name}: empty cell in {line!r}"
        rows[cells[0]] = cells[1:]
    return rows


def _labels(cell: str) -> tuple[str, ...]:
    return () if cell == NO_LABELS else tuple(label.strip() for label in cell.split(","))


def _rule_alerts() -> dict[str, dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"] if "alert" in rule}


# --- metrics ------------------------------------------------------------------------------------


def test_metric_table_lists_exactly_the_served_families() -> None:
    """Every family of exporter/catalog.py has a row, and every row is a served family."""
    documented = set(_table("Metrics"))
    served = {spec.name for spec in CATALOG}
    assert served - documented == set(), "served, missing from docs/metrics.md"
    assert documented - served == set(), "in docs/metrics.md, not served by exporter/catalog.py"


@pytest.mark.parametrize("spec", CATALOG, ids=lambda spec: spec.name)
def test_metric_row_has_the_served_type_and_labels(spec: MetricSpec) -> None:
    """The row of each family states its type and its label names in catalog order."""
    row = _table("Metrics").get(spec.name)
    assert row is not None, f"{spec.name} has no row"
    kind, labels, meaning = row
    assert kind == spec.kind
    assert _labels(labels) == spec.labels
    assert len(meaning) > 20, f"{spec.name}: say what it means"


def test_metric_names_follow_the_conventions() -> None:
    """Served names start with scheduler_, counters end in _total, nothing else does."""
    for spec in CATALOG:
        assert spec.name.startswith("scheduler_"), spec.name
        assert spec.name.endswith("_total") == (spec.kind == "counter"), spec.name


# --- alerts -------------------------------------------------------------------------------------


def test_alert_table_lists_exactly_the_shipped_alerts() -> None:
    """Every alert of the rules file has a row, and every row is an alert of the rules file."""
    documented = set(_table("Alerts"))
    shipped = set(_rule_alerts())
    assert shipped - documented == set(), "in the rules, missing from docs/metrics.md"
    assert documented - shipped == set(), "in docs/metrics.md, not in alerts/schedctl-rules.yml"


@pytest.mark.parametrize("alertname", sorted(_rule_alerts()))
def test_alert_row_has_the_rule_severity_for_and_runbook(alertname: str) -> None:
    """The row states the rule's severity (a task alert's default: the fallback of its
    per-task severity template) and `for`, and links the rule's runbook anchor, which is a
    heading of alerts/runbook.md."""
    row = _table("Alerts").get(alertname)
    assert row is not None, f"{alertname} has no row"
    severity, for_, meaning, runbook = row
    rule = _rule_alerts()[alertname]
    assert severity in SEVERITIES
    assert severity == default_severity(rule["labels"]["severity"])
    assert for_ == rule["for"]
    assert len(meaning) > 20, f"{alertname}: say when it fires"
    anchor = alertname.lower()
    assert runbook == f"[runbook](../alerts/runbook.md#{anchor})"
    assert rule["annotations"]["runbook_url"].endswith(f"/alerts/runbook.md#{anchor}")
    headings = re.findall(r"^## (\w+)\s*$", RUNBOOK.read_text(encoding="utf-8"), re.MULTILINE)
    assert alertname in headings


# --- OpenTelemetry and SQL ----------------------------------------------------------------------


def test_otel_table_lists_exactly_the_scheduler_instruments() -> None:
    """The OpenTelemetry table names the instruments scheduler_core/telemetry/otel.py creates."""
    created = set(re.findall(r"\.create_\w+\(\s*\"([^\"]+)\"", OTEL.read_text(encoding="utf-8")))
    assert created, f"no instruments found in {OTEL}"
    assert set(_table("OpenTelemetry (scheduler)")) == created


def test_sql_table_list_is_the_models() -> None:
    """The SQL tables section names every table of scheduler_core/models.py, and no other."""
    assert set(_table("SQL tables")) == set(models.metadata.tables)


# --- the check itself ---------------------------------------------------------------------------


def test_table_parser_reads_cells_and_rejects_a_duplicate_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The parser returns the body rows by first cell and fails on a row given twice."""
    doc = tmp_path / "metrics.md"
    table = "| a | b |\n| --- | --- |\n| x | 1, 2 |\n"
    doc.write_text(f"# t\n\n## T\n\n{table}\n## U\n\n| c |\n| --- |\n| y |\n", encoding="utf-8")
    monkeypatch.setattr(f"{__name__}.DOC", doc)
    assert _table("T") == {"x": ["1, 2"]}
    assert _labels("1, 2") == ("1", "2")
    assert _labels(NO_LABELS) == ()
    doc.write_text(f"## T\n\n{table}| x | 3 |\n", encoding="utf-8")
    with pytest.raises(AssertionError, match="two rows"):
        _table("T")
