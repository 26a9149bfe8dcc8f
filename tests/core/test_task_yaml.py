"""The task-file YAML loader gives ``yaml.safe_load``'s results and errors exactly.

``TaskFileLoader`` builds plain documents itself and leaves everything else to PyYAML's
``SafeConstructor``: every document here is loaded both ways and compared by value, type
and identity sharing, and every error by type, message and line.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler_core.task_yaml import TaskFileLoader

REFERENCE = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
REPO = Path(__file__).resolve().parents[2]

DOCUMENTS = [
    "",
    "# only a comment\n",
    "~",
    "plain",
    "tasks: []",
    "tasks:\n- name: a\n  cron: '*/5 * * * *'\n  callable: m:f\n",
    "a: 1\nb: -2\nc: +3\nd: 0\ne: 010\nf: 0o10\ng: 0x1F\nh: 0b101\ni: 1_000\nj: 1:30\nk: 190:20:30",
    "a: 1.5\nb: -.5\nc: 1e3\nd: 1.0e+3\ne: .inf\nf: -.Inf\ng: .nan\nh: 1:30.5\ni: 1_0.5",
    "a: yes\nb: No\nc: on\nd: OFF\ne: true\nf: FALSE\ng: y\nh: n",
    "a: null\nb: ~\nc:\nd: Null\ne: ''\nf: 'null'\ng: \"~\"",
    "a: 2026-12-01\nb: 2026-12-01T09:00:00+01:00\nc: 2026-12-01 09:00:00.5\nd: 2026-12-01t09:00:00Z",
    "a: '1'\nb: \"2\"\nc: !!str 3\nd: !!int '4'\ne: !!float '5'\nf: !!bool 'yes'",
    "{1: a, 2.5: b, true: c, null: d, 2026-01-01: e, '1': f}",
    "a: 1\na: 2\nb: [1, 2]\nb: {c: 3}",
    "base: &b {x: 1, y: 2}\nuse: *b\nlist: [*b, *b]",
    "s: &s hello\nt: *s",
    "base: &b {x: 1}\nmerged:\n  <<: *b\n  y: 2",
    "m:\n  <<: [{a: 1}, {b: 2}]\n  c: 3",
    "m:\n  <<: 1",
    "m:\n  <<: [1]",
    "= : value\nother: =",
    "set: !!set {a, b}\nomap: !!omap [a: 1, b: 2]\npairs: !!pairs [a: 1, a: 2]",
    "bin: !!binary aGVsbG8=",
    "bad: !!binary '!!!'",
    "? [a, b]\n: value",
    "? {a: 1}\n: value",
    "&r [*r]",
    "&m {self: *m}",
    "a: !!python/object:os.system x",
    "a: !custom x",
    "!!map [1, 2]",
    "!!seq {a: 1}",
    "a: !!map x",
    "a: !!timestamp 2026-13-45",
    "a: !!int x",
    "a: 0b_",
    "a: [unclosed",
    "a: b\n  c: d",
    "key: 'unterminated\n",
    "- a\n---\n- b\n",
    "tasks:\n  - name: x\n    command: [sh, -c, 'echo 1']\n    retries: {max: 2, delay: 30s}\n",
    "\t- tab",
    "a:\n  - b\n  -\n  - c: [d, {e: f}]",
]


def load(text: str, loader: Any) -> tuple[str, Any]:
    """``("ok", data)`` or ``("error", (type, message))``."""
    try:
        return "ok", yaml.load(text, Loader=loader)
    except Exception as exc:
        return "error", (type(exc), str(exc))


def same(a: Any, b: Any, pairs: dict[int, int] | None = None) -> bool:
    """Equal value and type all the way down (``True`` is not ``1``, NaN is NaN), and the
    same sharing of mappings and lists (an alias is one object in both, a recursion too)."""
    pairs = {} if pairs is None else pairs
    if type(a) is not type(b):
        return False
    if isinstance(a, dict | list):
        if id(a) in pairs or -id(b) in pairs:  # seen: the same pairing both ways
            return pairs.get(id(a)) == id(b) and pairs.get(-id(b)) == id(a)
        pairs[id(a)], pairs[-id(b)] = id(b), id(a)
        if isinstance(a, dict):
            return list(map(repr, a)) == list(map(repr, b)) and all(
                same(a[k], b[k], pairs) for k in a
            )
        return len(a) == len(b) and all(same(x, y, pairs) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return bool(a == b)


def check(text: str) -> None:
    expected_kind, expected = load(text, REFERENCE)
    kind, got = load(text, TaskFileLoader)
    assert kind == expected_kind, (text, expected, got)
    if kind == "error":
        assert got == expected, text
    else:
        assert same(expected, got), (text, expected, got)


@pytest.mark.parametrize("text", DOCUMENTS)
def test_document_loads_as_safe_load_does(text: str) -> None:
    check(text)


def test_the_repository_task_files_load_as_safe_load_does() -> None:
    files = sorted(REPO.glob("examples/**/*.yaml")) + sorted(REPO.glob("scheduler_core/**/*.yaml"))
    assert files
    for path in files:
        check(path.read_text(encoding="utf-8"))


def test_a_generated_large_task_file_loads_as_safe_load_does() -> None:
    from bench.runtime_adds import task_document

    check(yaml.safe_dump(task_document(600), sort_keys=False))


def test_an_error_names_the_same_line() -> None:
    text = "tasks:\n  - name: a\n    cron: '* * * * *'\n  - name: [b\n"
    kind, (error_type, message) = load(text, TaskFileLoader)
    assert kind == "error" and issubclass(error_type, yaml.YAMLError)
    assert message == load(text, REFERENCE)[1][1]
    assert "line 4" in message or "line 5" in message


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(["yes", "0x1f", "010", "1:30", "=", "<<", "~", "2026-01-01", ".inf"]),
)
documents = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.one_of(st.text(max_size=6), st.integers()), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(documents, st.sampled_from([False, True]))
def test_dumped_documents_load_as_safe_load_does(document: Any, flow: bool) -> None:
    check(yaml.safe_dump(document, default_flow_style=flow))


fragments = st.sampled_from(
    [
        "a", ": ", "- ", "\n", "  ", "&x ", "*x", "<<", "!!set ", "!!str ", "{", "}", "[",
        "]", ", ", "'", '"', "1", "0x1", "yes", "~", "? ", "#", "2026-01-01", "=", "!t ",
    ]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(fragments, max_size=30).map("".join))
def test_fuzzed_text_loads_or_fails_as_safe_load_does(text: str) -> None:
    check(text)
