"""The chart renders valid, production-shaped objects: defaults and three replicas on PostgreSQL
with ServiceMonitor, PrometheusRule and dashboards, checked with Helm's own engine."""

from __future__ import annotations

import base64
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.helm.chart import (
    CHART_DIR,
    KUBE_VERSIONS,
    NAMESPACE,
    NOTES,
    PRODUCTION_VALUES,
    by_kind,
    merged,
    only,
    render,
    render_raw,
    validate_custom,
    validate_object,
)

# An install that creates its own database Secret and runs the exporter without a token.
CREATED_SECRET_VALUES = merged(
    PRODUCTION_VALUES,
    {
        "database": {
            "existingSecret": "",
            "url": "postgresql://schedctl:s3cret@postgres.db:5432/schedctl",
        },
        "exporter": {"auth": {"allowUnauthenticated": True}},
    },
)

SCENARIOS = {
    "defaults": {},
    "production": PRODUCTION_VALUES,
    "created-secret": CREATED_SECRET_VALUES,
    "admin-api": merged(PRODUCTION_VALUES, {"exporter": {"admin": {"enabled": True}}}),
}


def container(deployment: dict[str, Any], name: str, *, init: bool = False) -> dict[str, Any]:
    """One container of the Deployment's pod template, by name."""
    pod = deployment["spec"]["template"]["spec"]
    found = [c for c in pod["initContainers" if init else "containers"] if c["name"] == name]
    assert len(found) == 1, f"no single container {name!r}"
    return found[0]


def env_of(c: dict[str, Any]) -> dict[str, Any]:
    """A container's environment by variable name."""
    return {item["name"]: item for item in c.get("env", [])}


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_every_rendered_object_validates(scenario: str, kube_version: str) -> None:
    """Every object validates strictly: built-in kinds against Kubernetes' own schemas, the
    prometheus-operator kinds against their CRD schemas."""
    objects = render(SCENARIOS[scenario])
    assert {"Deployment", "Service", "ConfigMap", "ServiceAccount"} <= {o["kind"] for o in objects}
    for obj in objects:
        validate_object(obj, kube_version)


@pytest.mark.parametrize("scenario", ["defaults", "production"])
@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_helm_lint_strict_is_clean(scenario: str, kube_version: str) -> None:
    """`helm lint --strict` for the Kubernetes version reports no warning or error
    (informational notes only)."""
    report = helm.lint(
        CHART_DIR,
        SCENARIOS[scenario] or None,
        strict=True,
        namespace=NAMESPACE,
        kube_version=f"v{kube_version}.0",
    )
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_validators_reject_an_unknown_field() -> None:
    """The validators used above are not vacuous: a misspelt field fails both kinds of check."""
    objects = render(PRODUCTION_VALUES)
    deployment = only(objects, "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_object(deployment, "1.33")
    monitor = only(objects, "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["intervall"] = "30s"
    with pytest.raises(jsonschema.ValidationError):
        validate_custom(monitor, "1.33")


def test_defaults_run_one_pod_on_sqlite_in_an_emptydir() -> None:
    """By default one pod uses SQLite at /var/lib/schedctl/schedctl.db on an emptyDir shared by
    all its containers, with no PodDisruptionBudget and no monitoring objects."""
    objects = render({})
    kinds = {o["kind"] for o in objects}
    assert not kinds & {"PodDisruptionBudget", "ServiceMonitor", "PrometheusRule"}
    assert [c["metadata"]["name"] for c in by_kind(objects, "ConfigMap")] == ["schedctl-tasks"]
    deployment = only(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes["data"]
    for c in [*pod["initContainers"], *pod["containers"]]:
        assert env_of(c)["SCHEDCTL_DATABASE_URL"]["value"] == (
            "sqlite:////var/lib/schedctl/schedctl.db"
        )
        mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        assert mounts["data"] == "/var/lib/schedctl"


def test_postgresql_replicas_read_the_url_from_the_existing_secret() -> None:
    """With PostgreSQL every container reads the URL from the named Secret and key, no data
    volume exists, and three replicas get a PodDisruptionBudget."""
    objects = render(PRODUCTION_VALUES)
    deployment = only(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    pod = deployment["spec"]["template"]["spec"]
    assert "data" not in {v["name"] for v in pod["volumes"]}
    for c in [*pod["initContainers"], *pod["containers"]]:
        ref = env_of(c)["SCHEDCTL_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "schedctl-db", "key": "url"}
    pdb = only(objects, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]


def test_created_secret_holds_the_url_and_is_the_only_place_it_appears() -> None:
    """Given database.url, the chart stores it in its own Secret and the pods reference that
    Secret: the password is in no other rendered object and not in NOTES."""
    raw = render_raw(CREATED_SECRET_VALUES)
    objects = render(CREATED_SECRET_VALUES)
    secret = only(objects, "Secret")
    url = CREATED_SECRET_VALUES["database"]["url"]
    assert base64.b64decode(secret["data"]["database-url"]).decode() == url
    assert "exporter-token" not in secret["data"]
    for obj in objects:
        if obj["kind"] != "Secret":
            assert "s3cret" not in yaml.safe_dump(obj)
    assert "s3cret" not in raw[NOTES]
    scheduler = container(only(objects, "Deployment"), "scheduler")
    ref = env_of(scheduler)["SCHEDCTL_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": secret["metadata"]["name"], "key": "database-url"}


def test_containers_and_probes_are_wired_to_the_processes() -> None:
    """The migration init container runs `db upgrade` before the scheduler starts; the
    scheduler is probed on /health (startup and liveness) and knows its pod name; the exporter
    sidecar is ready on /ready and alive on /health."""
    deployment = only(render(PRODUCTION_VALUES), "Deployment")
    migrations = container(deployment, "migrations", init=True)
    assert migrations["args"] == ["db", "upgrade"]
    scheduler = container(deployment, "scheduler")
    assert scheduler["args"][:5] == [
        "scheduler",
        "--config",
        "/etc/schedctl/tasks.yaml",
        "--health-listen",
        "0.0.0.0:8090",
    ]
    assert scheduler["ports"] == [{"name": "health", "containerPort": 8090, "protocol": "TCP"}]
    for probe in ("startupProbe", "livenessProbe"):
        assert scheduler[probe]["httpGet"] == {"path": "/health", "port": "health"}
    instance_id = env_of(scheduler)["SCHEDCTL_INSTANCE_ID"]["valueFrom"]["fieldRef"]
    assert instance_id == {"fieldPath": "metadata.name"}
    mounts = {m["name"]: m for m in scheduler["volumeMounts"]}
    assert mounts["tasks"] == {"name": "tasks", "mountPath": "/etc/schedctl", "readOnly": True}

    exporter = container(deployment, "exporter")
    assert exporter["args"][:3] == ["exporter", "--listen", "0.0.0.0:9464"]
    assert exporter["ports"] == [{"name": "metrics", "containerPort": 9464, "protocol": "TCP"}]
    assert exporter["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "metrics"}
    assert exporter["livenessProbe"]["httpGet"] == {"path": "/health", "port": "metrics"}
    token = env_of(exporter)["SCHEDCTL_EXPORTER_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert token == {"name": "schedctl", "key": "exporter-token"}
    for c in (migrations, scheduler, exporter):
        assert c["image"] == "registry.invalid/team/schedctl:0.1.0"
        assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_container_is_hardened(scenario: str) -> None:
    """Every container runs as non-root with a read-only root filesystem, no privilege
    escalation, no capabilities and the runtime's seccomp profile, and /tmp is writable."""
    deployment = only(render(SCENARIOS[scenario]), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False
    assert "emptyDir" in {v["name"]: v for v in pod["volumes"]}["tmp"]
    for c in [*pod.get("initContainers", []), *pod["containers"]]:
        assert c["securityContext"] == {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        }, c["name"]
        assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]


def test_service_exposes_the_named_metrics_port_that_the_servicemonitor_scrapes() -> None:
    """The Service's `metrics` port selects the pods, and the ServiceMonitor scrapes that port
    with the exporter token and carries the labels kube-prometheus-stack selects on."""
    objects = render(PRODUCTION_VALUES)
    service = only(objects, "Service")
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 9464, "targetPort": "metrics", "protocol": "TCP"}
    ]
    pod_labels = only(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    monitor = only(objects, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kps"
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    endpoint = monitor["spec"]["endpoints"][0]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    assert endpoint["authorization"]["credentials"] == {"name": "schedctl", "key": "exporter-token"}
    assert only(objects, "PrometheusRule")["metadata"]["labels"]["release"] == "kps"


def test_unauthenticated_exporter_gets_the_flag_and_no_token() -> None:
    """With exporter.auth.allowUnauthenticated the exporter is started with the flag, gets no
    token and the ServiceMonitor sends none."""
    objects = render(CREATED_SECRET_VALUES)
    exporter = container(only(objects, "Deployment"), "exporter")
    assert "--allow-unauthenticated" in exporter["args"]
    assert "SCHEDCTL_EXPORTER_TOKEN" not in env_of(exporter)
    assert "authorization" not in only(objects, "ServiceMonitor")["spec"]["endpoints"][0]


def test_recommended_labels_are_on_every_object() -> None:
    """Every object carries the recommended app.kubernetes.io labels and helm.sh/chart."""
    for obj in render(PRODUCTION_VALUES):
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "schedctl"
        assert labels["app.kubernetes.io/instance"] == "schedctl"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/version"] == "0.1.0"
        assert labels["helm.sh/chart"] == "schedctl-0.1.0"


def test_tasks_configmap_is_the_task_file_from_values() -> None:
    """The tasks ConfigMap holds `defaults:` from taskDefaults and `tasks:` from tasks, and a
    YAML 1.1 reader (PyYAML, as the scheduler uses) gets back exactly the values given: strings
    like "yes" or a timestamp stay strings, large integers stay integers."""
    objects = render(PRODUCTION_VALUES)
    tasks_cm = next(
        c for c in by_kind(objects, "ConfigMap") if c["metadata"]["name"] == "schedctl-tasks"
    )
    task_file = yaml.safe_load(tasks_cm["data"]["tasks.yaml"])
    assert task_file == {
        "defaults": PRODUCTION_VALUES["taskDefaults"],
        "tasks": PRODUCTION_VALUES["tasks"],
    }
    volumes = only(objects, "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "tasks", "configMap": {"name": "schedctl-tasks"}} in volumes


def test_changing_the_tasks_rolls_the_pods() -> None:
    """A change to the tasks changes the pod template (checksum annotation), so the scheduler
    restarts with the new task file; the same values give the same checksum."""

    def checksum(values: dict[str, Any]) -> str:
        pod = only(render(values), "Deployment")["spec"]["template"]
        return pod["metadata"]["annotations"]["checksum/tasks"]

    changed = merged(PRODUCTION_VALUES, {"taskDefaults": {"max_runtime": "20m"}})
    assert checksum(PRODUCTION_VALUES) == checksum(PRODUCTION_VALUES)
    assert checksum(PRODUCTION_VALUES) != checksum(changed)


def test_sqlite_can_use_an_existing_claim() -> None:
    """database.sqlite.existingClaim puts the SQLite file on that PersistentVolumeClaim."""
    values = {"database": {"sqlite": {"existingClaim": "schedctl-data"}}}
    pod = only(render(values), "Deployment")["spec"]["template"]["spec"]
    data = {v["name"]: v for v in pod["volumes"]}["data"]
    assert data == {"name": "data", "persistentVolumeClaim": {"claimName": "schedctl-data"}}
    assert "the SQLite database lives on an emptyDir" not in render_raw(values)[NOTES]
    assert "the SQLite database lives on an emptyDir" in render_raw({})[NOTES]


def test_notes_tell_how_to_reach_the_exporter() -> None:
    """NOTES.txt names the Service to port-forward and how to read the exporter token."""
    notes = render_raw(PRODUCTION_VALUES)[NOTES]
    assert "port-forward svc/schedctl 9464:metrics" in notes
    assert "get secret schedctl -o jsonpath='{.data.exporter-token}'" in notes
    assert "release=kps" in notes


def test_admin_api_is_off_by_default_and_on_with_a_generated_or_existing_token() -> None:
    """exporter.admin.enabled starts the exporter with --enable-admin-api and the admin token
    from the chart's Secret (generated) or from an existing Secret; off, neither appears."""
    off = container(only(render({}), "Deployment"), "exporter")
    assert "--enable-admin-api" not in off["args"] and "SCHEDCTL_ADMIN_TOKEN" not in env_of(off)
    objects = render({"exporter": {"admin": {"enabled": True}}})
    exporter = container(only(objects, "Deployment"), "exporter")
    assert "--enable-admin-api" in exporter["args"]
    ref = env_of(exporter)["SCHEDCTL_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "schedctl", "key": "admin-token"}
    secret = only(objects, "Secret")["data"]
    admin, read = (base64.b64decode(secret[k]) for k in ("admin-token", "exporter-token"))
    assert len(admin) == 48 and admin != read
    existing = {"enabled": True, "existingSecret": "ops-tokens", "existingSecretKey": "admin"}
    objects = render({"exporter": {"admin": existing}})
    ref = env_of(container(only(objects, "Deployment"), "exporter"))["SCHEDCTL_ADMIN_TOKEN"]
    assert ref["valueFrom"]["secretKeyRef"] == {"name": "ops-tokens", "key": "admin"}
    assert "admin-token" not in only(objects, "Secret")["data"]
    notes = render_raw({"exporter": {"admin": {"enabled": True}}})[NOTES]
    assert "/api/v1/tasks/TASK/pause" in notes and "{.data.admin-token}" in notes


def test_grafana_url_reaches_the_exporter_and_the_notes_point_at_the_status_page() -> None:
    """exporter.grafanaUrl becomes --grafana-url (the status page's dashboard links); empty,
    the flag is absent. NOTES.txt gives the status page's address either way."""
    off = container(only(render({}), "Deployment"), "exporter")
    assert "--grafana-url" not in off["args"]
    url = "https://grafana.example.com"
    on = container(only(render({"exporter": {"grafanaUrl": url}}), "Deployment"), "exporter")
    flag = on["args"].index("--grafana-url")
    assert on["args"][flag + 1] == url
    notes = render_raw(PRODUCTION_VALUES)[NOTES]
    assert "The status page, with the same port-forward: http://localhost:9464/" in notes
