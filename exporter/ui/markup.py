"""HTML that escapes by default: every value put into a template is escaped unless it is
already :class:`Markup` (HTML built here, from escaped parts).

    html("<td>{name}</td>", name=task.name)     # a name "<b>" shows as text
    join(html("<li>{x}</li>", x=x) for x in items)

Nothing else in the status page writes HTML: task names, error messages, outputs and every
other value from the database reach the page through :func:`html` or :func:`escape`.
"""

from __future__ import annotations

from collections.abc import Iterable
from html import escape as html_escape
from typing import Any
from urllib.parse import quote, urlencode

__all__ = ["Markup", "escape", "html", "join", "path_part", "query_string"]


class Markup(str):
    """Text that is already safe HTML (made by :func:`html`, :func:`escape` or :func:`join`)."""

    __slots__ = ()


def escape(value: object) -> Markup:
    """``value`` as HTML text: ``& < > " '`` escaped; Markup passes through; None is empty."""
    if isinstance(value, Markup):
        return value
    if value is None:
        return Markup("")
    return Markup(html_escape(str(value), quote=True))


def html(template: str, /, **values: Any) -> Markup:
    """``template.format(**values)`` with each value escaped (Markup values kept as they are).

    The template itself is trusted: it is a literal in this package, never data.
    """
    return Markup(template.format(**{key: escape(value) for key, value in values.items()}))


def join(parts: Iterable[Markup], separator: str = "") -> Markup:
    """Concatenate pieces of Markup (plain strings are escaped first)."""
    return Markup(separator.join(escape(part) for part in parts))


def path_part(text: str) -> str:
    """``text`` as one URL path segment (slashes and every other reserved character encoded)."""
    return quote(text, safe="")


def query_string(params: dict[str, str | int | None]) -> str:
    """A query string (``?a=1&b=x``) of the parameters that are set; empty when none is."""
    kept = {key: str(value) for key, value in params.items() if value not in (None, "")}
    return "?" + urlencode(kept) if kept else ""
