"""A small static check on PromQL text: is every raw series selector aggregated so that the
scrape-target labels (`instance`, `job`, `pod`) are gone? Shared by the rule and dashboard tests.

Not a PromQL parser: it finds metric names outside strings and label matchers and looks for an
enclosing aggregation (`max by (task) (...)`, `count(...)`, `sum(...) by (...)`, `absent(...)`).
"""

from __future__ import annotations

import re

TARGET_LABELS = frozenset({"instance", "job", "pod"})
# Aggregations whose output has only the grouping labels; topk/bottomk keep every label.
_LABEL_DROPPING = ("sum", "min", "max", "avg", "count", "group", "stddev", "stdvar", "quantile")
_RAW_SERIES = re.compile(r"(?<![\w:$])(scheduler_\w+|up|ALERTS)(?![\w:])(?!\s*\()")
_AGG_BEFORE = re.compile(
    r"\b(?P<op>" + "|".join(_LABEL_DROPPING) + r")\s*"
    r"(?:(?P<clause>by|without)\s*\((?P<labels>[^()]*)\)\s*)?$"
)
_CLAUSE_AFTER = re.compile(r"^\s*(?P<clause>by|without)\s*\((?P<labels>[^()]*)\)")
_ABSENT_BEFORE = re.compile(r"\babsent\s*$")


def _blank_strings_and_matchers(expr: str) -> str:
    """Same length as expr, with quoted strings and {...} matchers replaced by spaces."""
    out = []
    quote: str | None = None
    depth = 0
    for char in expr:
        if quote:
            out.append(" ")
            if char == quote:
                quote = None
        elif char in "\"'`":
            quote = char
            out.append(" ")
        elif char == "{":
            depth += 1
            out.append(" ")
        elif char == "}":
            depth -= 1
            out.append(" ")
        else:
            out.append(" " if depth else char)
    return "".join(out)


def _paren_pairs(text: str) -> list[tuple[int, int]]:
    stack: list[int] = []
    pairs = []
    for index, char in enumerate(text):
        if char == "(":
            stack.append(index)
        elif char == ")":
            pairs.append((stack.pop(), index))
    if stack:
        raise ValueError(f"unbalanced parentheses in: {text}")
    return pairs


def _drops_target_labels(clause: str | None, labels: str | None) -> bool:
    names = {name.strip() for name in (labels or "").split(",") if name.strip()}
    if clause is None:
        return True
    if clause == "by":
        return not names & TARGET_LABELS
    return names >= TARGET_LABELS


def unaggregated_selectors(expr: str) -> list[str]:
    """Raw metric names in expr that no enclosing aggregation strips of instance/job/pod."""
    text = _blank_strings_and_matchers(expr)
    pairs = _paren_pairs(text)
    offenders = []
    for match in _RAW_SERIES.finditer(text):
        position = match.start()
        enclosing = sorted(
            ((start, end) for start, end in pairs if start < position < end),
            key=lambda pair: pair[0],
            reverse=True,
        )
        covered = False
        for start, end in enclosing:
            before = text[:start]
            after = text[end + 1 :]
            if _ABSENT_BEFORE.search(before):
                covered = True
            elif agg := _AGG_BEFORE.search(before):
                clause, labels = agg.group("clause"), agg.group("labels")
                if clause is None and (trailing := _CLAUSE_AFTER.match(after)):
                    clause, labels = trailing.group("clause"), trailing.group("labels")
                covered = _drops_target_labels(clause, labels)
            if covered:
                break
        if not covered:
            offenders.append(match.group(1))
    return offenders


def raw_metric_names(expr: str) -> set[str]:
    """Every raw (not recorded) series name that expr selects."""
    return {match.group(1) for match in _RAW_SERIES.finditer(_blank_strings_and_matchers(expr))}
