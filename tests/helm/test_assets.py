"""The chart ships exactly the alert rules in alerts/ and the dashboards in dashboards/: its
copies in helm/schedctl/files/ are in sync, and what it renders is the source, unchanged."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import helm_python as helm
import pytest
import yaml

from tests.helm.chart import CHART_DIR, PRODUCTION_VALUES, REPO, by_kind, only, render

SYNC_SCRIPT = REPO / "helm" / "sync_assets.py"


def source_rule_files() -> list[Path]:
    """The Prometheus rule files in alerts/ (top level, YAML with `groups`): promtool tests and
    the Alertmanager example are not rule files."""
    files = []
    for path in sorted((REPO / "alerts").glob("*")):
        if path.suffix in (".yml", ".yaml"):
            document = yaml.safe_load(path.read_text(encoding="utf-8"))
            if isinstance(document, dict) and "groups" in document:
                files.append(path)
    assert files, "alerts/ holds no Prometheus rule file: the chart would ship no alerts"
    return files


def source_dashboards() -> list[Path]:
    """The committed dashboards, dashboards/*.json."""
    files = sorted((REPO / "dashboards").glob("*.json"))
    assert files, "dashboards/ holds no *.json dashboard: the chart would ship no dashboards"
    return files


def chart_copies(sub: str) -> dict[str, bytes]:
    """The chart's copies under files/<sub>/, by file name."""
    return {p.name: p.read_bytes() for p in sorted((CHART_DIR / "files" / sub).glob("*"))}


def test_chart_rule_files_are_byte_identical_to_alerts() -> None:
    """helm/schedctl/files/rules/ holds exactly the rule files of alerts/, byte for byte
    (run `python helm/sync_assets.py` when this fails)."""
    expected = {p.name: p.read_bytes() for p in source_rule_files()}
    assert chart_copies("rules") == expected


def test_chart_dashboards_are_byte_identical_to_dashboards() -> None:
    """helm/schedctl/files/dashboards/ holds exactly dashboards/*.json, byte for byte
    (run `python helm/sync_assets.py` when this fails)."""
    expected = {p.name: p.read_bytes() for p in source_dashboards()}
    assert chart_copies("dashboards") == expected


def test_prometheusrule_contains_exactly_the_rules_in_alerts() -> None:
    """The rendered PrometheusRule's groups are the groups of the rule files in alerts/, in
    file order, with every rule, expression, label and annotation unchanged."""
    expected: list[Any] = []
    for path in source_rule_files():
        expected.extend(yaml.safe_load(path.read_text(encoding="utf-8"))["groups"])
    rule = only(render(PRODUCTION_VALUES), "PrometheusRule")
    assert rule["spec"]["groups"] == expected


def test_dashboard_configmaps_contain_exactly_the_json_in_dashboards() -> None:
    """Each dashboard in dashboards/ is one ConfigMap labelled grafana_dashboard: "1" whose
    only entry is the committed file's text, character for character."""
    expected = {p.name: p.read_text(encoding="utf-8") for p in source_dashboards()}
    configmaps = [
        cm
        for cm in by_kind(render(PRODUCTION_VALUES), "ConfigMap")
        if cm["metadata"]["labels"].get("grafana_dashboard") == "1"
    ]
    shipped: dict[str, str] = {}
    for cm in configmaps:
        assert len(cm["data"]) == 1, cm["metadata"]["name"]
        assert cm["metadata"]["labels"]["release"] == "kps"
        assert cm["metadata"]["annotations"] == {"grafana_folder": "schedctl"}
        shipped.update(cm["data"])
    assert len(configmaps) == len(expected)
    assert shipped == expected
    for text in shipped.values():
        json.loads(text)


def _load_sync_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sync_assets", SYNC_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def fake_repo(tmp_path: Path) -> Path:
    """A repository layout with a rule file, a promtool test, an Alertmanager example, two
    dashboards and a provisioning file, and a chart holding one stale copy."""
    alerts = tmp_path / "alerts"
    (alerts / "tests").mkdir(parents=True)
    (alerts / "rules.yml").write_text("groups:\n  - name: g\n    rules: []\n")
    (alerts / "tests" / "t.yml").write_text("rule_files: [../rules.yml]\ntests: []\n")
    (alerts / "alertmanager.example.yml").write_text("route:\n  receiver: r\n")
    (alerts / "runbook.md").write_text("# runbook\n")
    dashboards = tmp_path / "dashboards"
    (dashboards / "provisioning").mkdir(parents=True)
    (dashboards / "a.json").write_text('{"uid": "a"}\n')
    (dashboards / "b.json").write_text('{"uid": "b"}')
    (dashboards / "provisioning" / "p.yml").write_text("apiVersion: 1\n")
    stale = tmp_path / "helm" / "schedctl" / "files" / "dashboards"
    stale.mkdir(parents=True)
    (stale / "old.json").write_text("{}")
    return tmp_path


def test_sync_copies_only_rule_files_and_dashboards_and_removes_stale_copies(
    fake_repo: Path,
) -> None:
    """The sync step copies rule files and dashboards, skips promtool tests, the Alertmanager
    example and provisioning files, removes copies whose source is gone, and then has nothing
    left to do."""
    sync_assets = _load_sync_module()
    changes = sync_assets.sync(fake_repo)
    files = fake_repo / "helm" / "schedctl" / "files"
    assert sorted(str(p.relative_to(files)) for p in files.rglob("*") if p.is_file()) == [
        "dashboards/a.json",
        "dashboards/b.json",
        "rules/rules.yml",
    ]
    assert (files / "dashboards" / "b.json").read_text() == '{"uid": "b"}'
    assert "remove helm/schedctl/files/dashboards/old.json" in changes
    assert sync_assets.sync(fake_repo) == []


def test_sync_check_reports_drift_without_writing(fake_repo: Path) -> None:
    """`sync_assets.py --check` exits 1 and names the differing file without touching it, and
    exits 0 once the copies match."""
    command = [sys.executable, str(SYNC_SCRIPT), "--repo", str(fake_repo)]
    result = subprocess.run([*command, "--check"], capture_output=True, text=True, check=False)
    assert result.returncode == 1
    assert "add helm/schedctl/files/rules/rules.yml" in result.stdout
    assert not (fake_repo / "helm" / "schedctl" / "files" / "rules").exists()
    subprocess.run(command, check=True, capture_output=True)
    result = subprocess.run([*command, "--check"], capture_output=True, text=True, check=False)
    assert (result.returncode, result.stdout) == (0, "")


def test_prometheusrule_follows_the_chart_copy(tmp_path: Path) -> None:
    """The comparison above is not vacuous: a chart whose rule copy was edited renders
    different groups than alerts/ holds."""
    edited = tmp_path / "schedctl"
    shutil.copytree(CHART_DIR, edited)
    rule_copy = next((edited / "files" / "rules").glob("*"))
    document = yaml.safe_load(rule_copy.read_text(encoding="utf-8"))
    document["groups"][0]["name"] = "edited"
    rule_copy.write_text(yaml.safe_dump(document), encoding="utf-8")
    with helm.Chart.load(edited) as chart:
        text = chart.render(PRODUCTION_VALUES, name="schedctl", namespace="jobs")
    rendered = yaml.safe_load(text["schedctl/templates/prometheusrule.yaml"])
    assert rendered["spec"]["groups"][0]["name"] == "edited"
