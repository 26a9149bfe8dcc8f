"""Test copies of the committed alerting configuration in which only timings are shortened.

The rule copy keeps every expression, label and annotation of alerts/schedctl-rules.yml and
divides each `for` and each range-selector window by :data:`TIME_SCALE`, so an end-to-end run
of a minute exercises the real rules. The Alertmanager copy keeps the routes and inhibitions of
alerts/alertmanager/alertmanager.example.yml and sends every receiver to one test webhook.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "ALERTMANAGER_EXAMPLE",
    "RULES_FILE",
    "SHORT_ROUTE_TIMINGS",
    "TIME_SCALE",
    "alertmanager_config",
    "parse_duration",
    "shortened_rules",
    "without_windows",
]

REPO = Path(__file__).resolve().parents[2]
RULES_FILE = REPO / "alerts" / "schedctl-rules.yml"
ALERTMANAGER_EXAMPLE = REPO / "alerts" / "alertmanager" / "alertmanager.example.yml"

#: A minute of the shipped rules is a second in the test: `for: 2m` becomes `for: 2s`,
#: `[1h]` becomes `[1m]`.
TIME_SCALE = 60
#: Alertmanager timings of every route in the test copy.
SHORT_ROUTE_TIMINGS = {"group_wait": "1s", "group_interval": "1s", "repeat_interval": "3s"}

_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
_DURATION = re.compile(r"(?:\d+(?:ms|s|m|h|d|w|y))+")
_DURATION_PART = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
#: A range selector's window, e.g. the `[30m]` of `increase(x[30m])`.
_WINDOW = re.compile(r"\[((?:\d+(?:ms|s|m|h|d|w|y))+)\]")


def parse_duration(text: str) -> float:
    """Seconds in a Prometheus duration such as ``90s``, ``1h30m`` or ``500ms``."""
    if not _DURATION.fullmatch(text):
        raise ValueError(f"not a Prometheus duration: {text!r}")
    return sum(int(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(text))


def _scaled(text: str, scale: int) -> str:
    milliseconds = max(1000, round(parse_duration(text) * 1000 / scale))
    return f"{milliseconds // 1000}s" if milliseconds % 1000 == 0 else f"{milliseconds}ms"


def shortened_rules(source: Path = RULES_FILE, *, scale: int = TIME_SCALE) -> dict[str, Any]:
    """The rule document of ``source`` with every `for` and range window divided by ``scale``
    (at least one second); nothing else changes."""
    document: dict[str, Any] = yaml.safe_load(source.read_text(encoding="utf-8"))
    for group in document["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = _scaled(str(rule["for"]), scale)
            rule["expr"] = _WINDOW.sub(
                lambda match: f"[{_scaled(match.group(1), scale)}]", str(rule["expr"])
            )
    return document


def without_windows(expr: str) -> str:
    """``expr`` with every range window replaced by ``[_]``: equal for a rule and its copy."""
    return _WINDOW.sub("[_]", expr)


def alertmanager_config(webhook_url: str, source: Path = ALERTMANAGER_EXAMPLE) -> dict[str, Any]:
    """The example config with short route timings and every receiver posting to
    ``webhook_url`` (resolved notifications included)."""
    config: dict[str, Any] = yaml.safe_load(source.read_text(encoding="utf-8"))
    _shorten_route(config["route"], root=True)
    config["receivers"] = [
        {
            "name": receiver["name"],
            "webhook_configs": [{"url": webhook_url, "send_resolved": True}],
        }
        for receiver in config["receivers"]
    ]
    return config


def _shorten_route(route: dict[str, Any], *, root: bool) -> None:
    for key, value in SHORT_ROUTE_TIMINGS.items():
        # A child without its own timing inherits the root's, which is short already.
        if root or key in route:
            route[key] = value
    for child in route.get("routes", []):
        _shorten_route(child, root=False)
