"""The status page's form posts: URL-encoded, small, each field bounded.

A post larger than :data:`MAX_FORM_BYTES` is refused before it is parsed (413), whatever its
``Content-Length`` claims; another content type is refused (415); a field longer than its
limit is an error naming the field, never silently cut.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import parse_qs

from aiohttp import web

__all__ = ["MAX_FIELD_CHARS", "MAX_FORM_BYTES", "FormError", "read_form"]

#: Largest form body accepted (bytes): a token, a name, a reason and a CSRF token fit easily.
MAX_FORM_BYTES: Final[int] = 8 * 1024
#: Longest value of any one field (characters).
MAX_FIELD_CHARS: Final[int] = 2000
_MAX_FIELDS: Final[int] = 16
_FORM_TYPE = "application/x-www-form-urlencoded"


class FormError(Exception):
    """A post the page refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def read_form(request: web.Request) -> dict[str, str]:
    """The fields of a URL-encoded post (the first value of each); FormError when the body is
    too large, not URL-encoded, not UTF-8, or holds too many or too long fields."""
    if request.content_type != _FORM_TYPE:
        raise FormError(415, f"send a form ({_FORM_TYPE})")
    declared = request.content_length
    if declared is not None and declared > MAX_FORM_BYTES:
        raise FormError(413, f"the form is larger than {MAX_FORM_BYTES} bytes")
    body = bytearray()
    while chunk := await request.content.read(MAX_FORM_BYTES + 1 - len(body)):
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise FormError(413, f"the form is larger than {MAX_FORM_BYTES} bytes")
    try:
        text = body.decode("utf-8")
        parsed = parse_qs(text, keep_blank_values=True, max_num_fields=_MAX_FIELDS)
    except (UnicodeDecodeError, ValueError):
        raise FormError(400, "the form is not valid UTF-8 URL-encoded data") from None
    fields = {key: values[0] for key, values in parsed.items()}
    for key, value in fields.items():
        if len(value) > MAX_FIELD_CHARS:
            raise FormError(400, f"{key}: longer than {MAX_FIELD_CHARS} characters")
    return fields
