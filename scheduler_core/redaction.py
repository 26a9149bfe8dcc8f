"""Redaction: hiding secrets in text a run leaves behind (its output, logs and result)
before anything is stored.

A :class:`Redactor` replaces two kinds of things with ``[REDACTED]``:

- **literal secrets** it is given (the database password, tokens), wherever they appear;
- what **patterns** (regular expressions) match: :data:`DEFAULT_REDACT_PATTERNS` (a URL's
  password, ``password=``/``token=``/``secret=``/``api_key=`` values in ``key=value``,
  ``key: value`` and JSON forms, ``Authorization`` headers) plus any given.

A pattern with capturing groups hides only what its groups matched, so the key stays and
the reader knows what was hidden (``password=[REDACTED]``); a pattern without groups hides
its whole match. Use ``(?:...)`` for a group that is not the secret. Values inside quotes
are hidden inside the quotes, so redacted JSON stays JSON.

Speed: the patterns run as one combined RE2 expression (linear time, one pass over the
text; Python's ``re`` takes milliseconds for the same alternation over 64 KiB), searched
first (by a twin compiled without capturing groups, which RE2 answers with its DFA alone)
and substituted only where it matches (~3 us for 1 KB without a secret). A pattern RE2
cannot run (look-around, back-references) runs with Python's ``re`` in a pass of its own.
RE2's ``\\w``, ``\\s`` and ``\\b`` are ASCII-only.

With the default patterns alone (no ``redact`` of the task's), text holding neither ``:``
nor ``=`` is not searched at all: every default pattern's match holds one of them (see
:data:`DEFAULT_PATTERNS_NEED`), so none can match, and ``str.__contains__`` tells in
~0.1 us what the search tells in ~3 us (most prints say neither).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Any, Protocol

import re2

__all__ = ["DEFAULT_PATTERNS_NEED", "DEFAULT_REDACT_PATTERNS", "REDACTED", "Redactor"]

REDACTED = "[REDACTED]"

#: Key words whose value is a secret: password, passwd, passphrase, pwd, secret, token,
#: api_key/api-key/apikey, access_key, private_key (matched inside longer keys too:
#: ``DB_PASSWORD``, ``client_secret``, ``X-Api-Key``).
_KEY = r"(?i:pass(?:word|wd|phrase)|pwd|secret|token|api[_-]?key|access[_-]?key|private[_-]?key)"
_KEY_TAIL = r"[\w-]*"
_DOUBLE_QUOTED = r'"((?:[^"\\\r\n]|\\.)*)"'
_SINGLE_QUOTED = r"'((?:[^'\\\r\n]|\\.)*)'"

DEFAULT_REDACT_PATTERNS: tuple[str, ...] = (
    # A URL's password: scheme://user:PASSWORD@host keeps the scheme, user and host.
    r"://[^\s:/?#@]*:([^\s/]+)@",
    # Authorization / Proxy-Authorization headers (also as JSON keys or key=value): the
    # scheme stays, the credentials go; with an unknown scheme, the rest of the value goes.
    r"(?i:authorization)[\"']?\s*[:=]\s*[\"']?"
    r"(?:(?i:bearer|basic|digest|negotiate|token|apikey)\s+([^\s'\",;]+)|([^\r\n'\",;]+))",
    # A quoted key (JSON, a Python dict's repr) with a string value: "password": "...".
    _KEY + _KEY_TAIL + r"[\"']\s*:\s*(?:" + _DOUBLE_QUOTED + "|" + _SINGLE_QUOTED + ")",
    # key=value and key: value, the value quoted or up to whitespace, a quote, & or ;.
    _KEY + _KEY_TAIL + r"\s*[:=]\s*(?:"
    + _DOUBLE_QUOTED + "|" + _SINGLE_QUOTED + r"|([^\s\"'&;]+))",
)  # fmt: skip

#: Characters of which every match of every default pattern holds at least one, outside
#: any optional part: the URL pattern's ``:`` of ``://``, the Authorization header's
#: ``[:=]``, the quoted key's ``:`` and key=value's ``[:=]`` (neither has a case to fold,
#: nor another code point RE2 would take for it). Text without any of them is left as it
#: is. A change to ``DEFAULT_REDACT_PATTERNS`` must keep this true (tests check it).
DEFAULT_PATTERNS_NEED = (":", "=")

#: Literal secrets shorter than this are ignored: they would hide ordinary text.
MIN_SECRET_LENGTH = 3


class _Match(Protocol):
    """What the replacement needs of a match (Python's ``re.Match`` and RE2's alike)."""

    @property
    def string(self) -> str: ...

    def span(self, group: int = 0) -> tuple[int, int]: ...


def _compile_re2(pattern: str, *, capture: bool = True) -> Any | None:
    """``pattern`` compiled by RE2, or None when RE2 cannot run it. Without ``capture``
    its groups are not groups: fit only to tell whether (and where) it matches, which RE2
    then answers without its slower engines that track groups."""
    options = re2.Options()
    options.log_errors = False  # a pattern RE2 rejects is no error here: re runs it
    options.never_capture = not capture
    try:
        return re2.compile(pattern, options)
    except re2.error:
        return None


def _masked(match: _Match, groups: int) -> str:
    """The match with what its groups matched replaced, or all of it if no group took
    part (an empty match hides nothing)."""
    start, end = match.span(0)
    if start == end:
        return ""
    text = match.string
    pieces: list[str] = []
    pos = start
    took_part = False
    for group in range(1, groups + 1):
        g_start, g_end = match.span(group)
        if g_start < 0:
            continue
        took_part = True
        if g_start < pos or g_start == g_end:  # inside a group already hidden, or empty
            continue
        pieces += (text[pos:g_start], REDACTED)
        pos = g_end
    if not took_part:
        return REDACTED
    pieces.append(text[pos:end])
    return "".join(pieces)


class Redactor:
    """Replaces secrets in text with ``[REDACTED]`` (see the module's docstring).

    Build one with :meth:`of` once (compiling is the slow part) and call :meth:`redact`
    per text; it keeps no state between calls, so threads may share it."""

    __slots__ = ("_gated", "_passes", "_secrets", "patterns")

    def __init__(
        self,
        patterns: tuple[str, ...],
        secrets: tuple[str, ...],
        passes: tuple[tuple[Any, Any], ...],
        *,
        gated: bool = False,
    ) -> None:
        #: Every pattern applied, the defaults first.
        self.patterns = patterns
        self._secrets = secrets
        #: Each one pass over the text: (finder, expression), compiled by RE2 or re. The
        #: finder tells whether the expression matches (the expression itself, or its twin
        #: without groups); the expression's groups say what to hide.
        self._passes = passes
        #: The patterns are the defaults alone: text holding none of
        #: ``DEFAULT_PATTERNS_NEED`` cannot match them.
        self._gated = gated

    @classmethod
    def of(cls, patterns: Sequence[str] = (), *, secrets: Sequence[str] = ()) -> Redactor:
        """A redactor for :data:`DEFAULT_REDACT_PATTERNS` plus ``patterns`` (Python ``re``
        syntax; one that does not compile raises ValueError naming it) and the literal
        ``secrets`` (those shorter than 3 characters are ignored)."""
        every = (*DEFAULT_REDACT_PATTERNS, *patterns)
        for pattern in every:
            try:
                re.compile(pattern)
            except re.error as exc:
                message = f"redact pattern {pattern!r} is not a valid regex: {exc}"
                raise ValueError(message) from None
        fast = [p for p in every if _compile_re2(p) is not None]
        slow = [re.compile(p) for p in every if p not in fast]
        together = "|".join(f"(?:{p})" for p in fast)
        combined = _compile_re2(together) if fast else None
        # Together they may not compile (a group name used twice): then one pass each.
        sources = [together] if combined is not None else fast
        passes = [(_finder(p), _compile_re2(p)) for p in sources]
        passes += [(regex, regex) for regex in slow]
        kept = {s for s in secrets if len(s) >= MIN_SECRET_LENGTH}
        # Longest first, so a secret that contains another is hidden whole.
        ordered = tuple(sorted(kept, key=lambda s: (-len(s), s)))
        return cls(every, ordered, tuple(passes), gated=not patterns)

    def redact(self, text: str) -> str:
        """``text`` with every secret and every pattern's match hidden."""
        # Literal secrets go first: a pattern's value may end inside one (at a & or ;),
        # which would leave the rest of the secret in the text.
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        if self._gated and ":" not in text and "=" not in text:
            return text  # no default pattern can match (``DEFAULT_PATTERNS_NEED``)
        for finder, regex in self._passes:
            # Most text holds no secret: a search says so in a third of a substitution's
            # time (pyre2's ``sub`` does Python work per call even when nothing matches).
            if finder.search(text) is not None:
                text = regex.sub(functools.partial(_masked, groups=regex.groups), text)
        return text


def _finder(pattern: str) -> Any:
    """RE2's ``pattern`` to search with: without its groups when RE2 takes it so."""
    finder = _compile_re2(pattern, capture=False)
    return finder if finder is not None else _compile_re2(pattern)
