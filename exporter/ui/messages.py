"""A page that only says something: why a request was refused, or what is missing."""

from __future__ import annotations

from exporter.ui.layout import Frame, page
from exporter.ui.markup import Markup, html

__all__ = ["render_message"]


def render_message(title: str, text: str, frame: Frame, *, back: str = "/") -> str:
    """A page titled ``title`` saying ``text``, with a link back to ``back``."""
    content: Markup = html(
        '<h1>{title}</h1><p class="banner warn" id="message">{text}</p>'
        '<p><a href="{back}">Back</a></p>',
        title=title, text=text, back=back,
    )  # fmt: skip
    return page(title, content, frame, refresh=False)
