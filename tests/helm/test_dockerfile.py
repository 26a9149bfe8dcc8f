"""The Dockerfile builds the image the chart runs: pinned base, non-root user, `pip install .`
(as the README installs it) and `schedctl` as the entrypoint. No Docker engine runs here, so
these tests check the file's instructions."""

from __future__ import annotations

import json
import re
import tomllib

import yaml

from tests.helm.chart import CHART_DIR, REPO

DOCKERFILE = REPO / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        pending += " " + stripped.removesuffix("\\").strip()
        if not stripped.endswith("\\"):
            logical.append(pending.strip())
            pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1]) for text in logical]


def test_base_image_is_pinned_to_an_exact_python_311_slim_bookworm_release() -> None:
    """Every FROM names python:3.11.<patch>-slim-bookworm: no floating or `latest` tag."""
    bases = [args.split()[0] for name, args in instructions() if name == "FROM"]
    assert bases
    for base in bases:
        assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", base), base
    assert "latest" not in DOCKERFILE.read_text(encoding="utf-8")


def test_image_runs_as_the_non_root_user_the_chart_expects() -> None:
    """The last USER is uid/gid 10001, numeric so Kubernetes can verify runAsNonRoot, and the
    chart's securityContext uses the same ids."""
    users = [args for name, args in instructions() if name == "USER"]
    assert users and users[-1] == "10001:10001"
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text(encoding="utf-8"))
    assert values["securityContext"] == {"runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001}


def test_package_is_installed_with_pip_install_dot_and_schedctl_is_the_entrypoint() -> None:
    """The project is installed with `pip install .` after copying the sources the build needs,
    and the entrypoint is the `schedctl` console script."""
    steps = instructions()
    runs = [args for name, args in steps if name == "RUN"]
    assert any(re.search(r"\bpip install \.(\s|$)", run) for run in runs)
    copied = " ".join(args for name, args in steps if name == "COPY")
    for needed in ("pyproject.toml", "README.md", "scheduler_core", "exporter"):
        assert needed in copied
    entrypoints = [json.loads(args) for name, args in steps if name == "ENTRYPOINT"]
    assert entrypoints == [["schedctl"]]
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert "schedctl" in pyproject["project"]["scripts"]


def test_chart_app_version_is_the_package_version() -> None:
    """The chart's appVersion (the default image tag) is the version in pyproject.toml."""
    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text(encoding="utf-8"))
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert chart["appVersion"] == pyproject["project"]["version"]


def test_dockerignore_keeps_the_build_context_to_the_sources() -> None:
    """.dockerignore excludes everything (the venv, .git, tests) except what the image needs."""
    lines = (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
    assert "*" in lines
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "scheduler_core", "exporter"}
