"""A callable's return value as the run's ``result``: JSON text bounded in UTF-8 bytes,
always valid JSON, with a note when the value had to be truncated or stored as its repr."""

from __future__ import annotations

import json

from scheduler_core.runtime.capture import DEFAULT_OUTPUT_LIMIT, check_output_limit

__all__ = ["result_json"]


def _dumps(value: object) -> tuple[str, int]:
    """Strict JSON for ``value`` and its size in UTF-8 bytes; characters outside ASCII
    stay as they are, unless a lone surrogate (which UTF-8 cannot hold) makes the text
    escape them all."""
    text = json.dumps(value, allow_nan=False, ensure_ascii=False)
    try:
        return text, len(text.encode("utf-8"))
    except UnicodeEncodeError:
        text = json.dumps(value, allow_nan=False)
        return text, len(text)


def _json_string(text: str, limit: int) -> tuple[str | None, int]:
    """The longest start of ``text`` whose JSON string is at most ``limit`` UTF-8 bytes,
    as that JSON string, and its length in characters (None if not even ``""`` fits)."""
    n = min(len(text), limit)
    while True:
        encoded, size = _dumps(text[:n])
        if size <= limit:
            return encoded, n
        if n == 0:
            return None, 0
        n = max(0, min(n - 1, n * limit // size - 1))


def result_json(value: object, limit: int = DEFAULT_OUTPUT_LIMIT) -> tuple[str | None, str | None]:
    """A return value as ``(json_text, note)``: ``(None, None)`` for None; the JSON text
    (tuples become lists) with no note if it fits in ``limit`` UTF-8 bytes; otherwise, and
    for a value JSON cannot hold (a set, an object, NaN), a JSON string holding the start
    of its JSON text or of its ``repr``, with a note saying so. The text is always valid
    JSON that UTF-8 can hold (or None, with a note, when ``limit`` is under 2 bytes)."""
    check_output_limit(limit)
    if value is None:
        return None, None
    try:
        text, size = _dumps(value)
    except Exception as exc:  # TypeError, ValueError (NaN, a cycle), RecursionError...
        try:
            shown = repr(value)
        except Exception as repr_exc:
            shown = f"<{type(value).__qualname__} object; repr failed: {repr_exc!r}>"
        stored, chars = _json_string(shown, limit)
        note = f"not JSON ({exc}): stored as its repr"
        if chars < len(shown):
            note += f", truncated to {chars} of {len(shown)} characters"
        return stored, note
    if size <= limit:
        return text, None
    stored, chars = _json_string(text, limit)
    return stored, (
        f"result is {size} bytes of JSON, over the {limit}-byte limit: "
        f"stored as a string of its first {chars} of {len(text)} characters"
    )
