"""Rendering the schedctl chart with Helm's own engine (helm-python-sdk) and validating the
objects it produces: built-in kinds with kubernetes-validate, prometheus-operator kinds with the
CRD schemas vendored in schemas/crds/."""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "helm" / "schedctl"
CRD_DIR = REPO / "schemas" / "crds"
KUBE_VERSIONS = ("1.29", "1.33")
RELEASE = "schedctl"
NAMESPACE = "jobs"
NOTES = "schedctl/templates/NOTES.txt"

# A production-shaped install: three replicas on PostgreSQL, everything kube-prometheus-stack
# picks up switched on, and tasks that exercise the task-file format.
PRODUCTION_VALUES: dict[str, Any] = {
    "replicas": 3,
    "image": {"repository": "registry.invalid/team/schedctl", "tag": "0.1.0"},
    "database": {
        "type": "postgresql",
        "existingSecret": "schedctl-db",
        "existingSecretKey": "url",
    },
    "serviceMonitor": {"enabled": True, "labels": {"release": "kps"}},
    "prometheusRule": {"enabled": True, "labels": {"release": "kps"}},
    "dashboards": {
        "enabled": True,
        "labels": {"release": "kps"},
        "annotations": {"grafana_folder": "schedctl"},
    },
    "taskDefaults": {"timezone": "UTC", "max_runtime": "10m"},
    "tasks": [
        {
            "name": "nightly-backup",
            "command": ["pg_dump", "--file", "/tmp/app.sql", "app"],
            "env": {"PGCONNECT_TIMEOUT": "10", "VERBOSE": "yes"},
            "cron": "30 2 * * *",
            "timezone": "Europe/Berlin",
            "timeout": "1h",
            "retries": {"max": 2, "backoff": "exponential", "delay": "30s"},
        },
        {
            "name": "refresh-cache",
            "callable": "myapp.jobs:refresh_cache",
            "every": "5m",
            "overlap": "skip",
            "max_runs": 1000000,
        },
        {"name": "poll", "callable": "myapp.jobs:poll", "cron": "*/15 * * * * 30"},
        {
            "name": "send-report",
            "callable": "myapp.jobs:send_report",
            "at": "2026-12-01T09:00:00+01:00",
        },
    ],
}


@functools.cache
def chart() -> helm.Chart:
    """The chart, loaded once per test session (charts are immutable)."""
    return helm.Chart.load(CHART_DIR)


def render_raw(values: dict[str, Any]) -> dict[str, str]:
    """Template path -> rendered text, exactly as `helm install` would render it."""
    return chart().render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    """Every Kubernetes object the chart renders for ``values``."""
    objects = []
    for path, text in sorted(render_raw(values).items()):
        if path == NOTES:
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc is not None)
    return objects


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """The objects of one kind."""
    return [obj for obj in objects if obj["kind"] == kind]


def only(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """The single object of ``kind``; fails when there is not exactly one."""
    found = by_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, rendered {len(found)}"
    return found[0]


def render_error(values: dict[str, Any]) -> str:
    """The message Helm fails with for ``values``; fails the test when rendering succeeds."""
    try:
        render_raw(values)
    except helm.HelmError as exc:
        return str(exc)
    raise AssertionError(f"the chart rendered values it should reject: {values}")


def merged(*layers: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge value layers, later ones winning (like repeated `-f` files)."""
    result: dict[str, Any] = {}
    for layer in layers:
        _merge_into(result, copy.deepcopy(layer))
    return result


def _merge_into(target: dict[str, Any], layer: dict[str, Any]) -> None:
    for key, value in layer.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge_into(target[key], value)
        else:
            target[key] = value


def validate_builtin(obj: dict[str, Any], kube_version: str) -> None:
    """Validate a built-in object with kubernetes-validate's strict schemas."""
    kubernetes_validate.validate(obj, kube_version, strict=True)


@functools.cache
def _crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    schemas = {}
    for path in sorted(CRD_DIR.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text(encoding="utf-8"))
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = _strict(version["schema"]["openAPIV3Schema"])
            schemas[(f"{group}/{version['name']}", kind)] = schema
    return schemas


def _strict(schema: Any) -> Any:
    """Close every object schema that the API server would prune: a field the CRD does not know
    is a typo that Kubernetes would drop silently (kubectl --validate=strict rejects it)."""
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    closed = {
        key: _strict(value) for key, value in schema.items() if not key.startswith("x-kubernetes")
    }
    if "properties" in schema:
        closed["properties"] = {key: _strict(value) for key, value in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get(
            "x-kubernetes-preserve-unknown-fields"
        ):
            closed["additionalProperties"] = False
    return closed


def validate_custom(obj: dict[str, Any], kube_version: str) -> None:
    """Validate a prometheus-operator object with its CRD schema, and its metadata with the
    Kubernetes ObjectMeta schema."""
    schema = _crd_schemas().get((obj["apiVersion"], obj["kind"]))
    assert schema is not None, f"no CRD schema for {obj['apiVersion']} {obj['kind']}"
    jsonschema.Draft202012Validator(schema).validate(obj)
    # The CRD's `metadata` is a bare object. Every kind carries the same ObjectMeta, so the
    # metadata is validated as a ConfigMap's.
    kubernetes_validate.validate(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj["metadata"]},
        kube_version,
        strict=True,
    )


def validate_object(obj: dict[str, Any], kube_version: str) -> None:
    """Validate any rendered object with the schema that applies to its kind."""
    if obj["apiVersion"].startswith("monitoring.coreos.com/"):
        validate_custom(obj, kube_version)
    else:
        validate_builtin(obj, kube_version)
