"""Redaction before anything a run leaves is stored (issue 19): the default patterns hide a
URL's password, ``password=``/``token=``/``secret=``/``api_key=`` values and
``Authorization`` credentials in their usual forms while keeping the key, custom patterns
and literal secrets are hidden too, redacted JSON stays JSON, and a bad pattern is named."""

from __future__ import annotations

import json

import pytest

from scheduler_core.redaction import (
    DEFAULT_PATTERNS_NEED,
    DEFAULT_REDACT_PATTERNS,
    REDACTED,
    Redactor,
)

PLANTED = "Tr0ub4dor-3"


@pytest.fixture(scope="module")
def redactor() -> Redactor:
    return Redactor.of()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            f"connecting to postgresql://schedctl:{PLANTED}@db.internal:5432/sched?sslmode=require",
            "connecting to postgresql://schedctl:[REDACTED]@db.internal:5432/sched?sslmode=require",
        ),
        (f"redis://:{PLANTED}@cache:6379/0", "redis://:[REDACTED]@cache:6379/0"),
        (
            f"amqp://u:{PLANTED}@mq, http://example.com:8080/x",
            "amqp://u:[REDACTED]@mq, http://example.com:8080/x",
        ),
    ],
)
def test_a_database_url_keeps_user_and_host_but_not_the_password(
    redactor: Redactor, text: str, expected: str
) -> None:
    """A URL's password is hidden; scheme, user, host, port and a URL without a password
    are kept."""
    assert redactor.redact(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"password={PLANTED} user=bob", "password=[REDACTED] user=bob"),
        (f"DB_PASSWORD={PLANTED}", "DB_PASSWORD=[REDACTED]"),
        (f"passwd: {PLANTED}", "passwd: [REDACTED]"),
        (f"pwd={PLANTED}", "pwd=[REDACTED]"),
        (f"GITHUB_TOKEN={PLANTED}", "GITHUB_TOKEN=[REDACTED]"),
        (f"/cb?token={PLANTED}&state=ok", "/cb?token=[REDACTED]&state=ok"),
        (f"client_secret = '{PLANTED} with spaces'", "client_secret = '[REDACTED]'"),
        (f"api_key={PLANTED}; apikey: {PLANTED}", "api_key=[REDACTED]; apikey: [REDACTED]"),
        (f"X-Api-Key: {PLANTED}", "X-Api-Key: [REDACTED]"),
        (f'SECRET="{PLANTED}"', 'SECRET="[REDACTED]"'),
    ],
)
def test_key_value_forms_keep_the_key_and_hide_the_value(
    redactor: Redactor, text: str, expected: str
) -> None:
    """``key=value`` and ``key: value`` forms, any case, quoted or not, hide the value."""
    assert redactor.redact(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"Authorization: Bearer {PLANTED}", "Authorization: Bearer [REDACTED]"),
        (f"authorization: basic {PLANTED}==", "authorization: basic [REDACTED]"),
        (f"AUTHORIZATION=Token {PLANTED}", "AUTHORIZATION=Token [REDACTED]"),
        (f"Proxy-Authorization: Custom {PLANTED}", "Proxy-Authorization: [REDACTED]"),
        (
            f'curl -H "Authorization: Bearer {PLANTED}" https://api',
            'curl -H "Authorization: Bearer [REDACTED]" https://api',
        ),
    ],
)
def test_authorization_headers_keep_the_scheme_and_hide_the_credentials(
    redactor: Redactor, text: str, expected: str
) -> None:
    """Bearer and Basic (any case) keep the scheme word; an unknown scheme is hidden with
    the credentials."""
    assert redactor.redact(text) == expected


def test_json_keeps_its_keys_and_stays_json(redactor: Redactor) -> None:
    """In JSON, string values of secret keys are hidden inside their quotes (escaped quotes
    included), other values stay, and the result still parses to the same shape."""
    document = {
        "password": f'{PLANTED}"quoted"',
        "tokens_used": 1234,
        "headers": {"Authorization": f"Bearer {PLANTED}"},
        "db_password": PLANTED,
        "rows": 7,
    }
    redacted = redactor.redact(json.dumps(document))
    assert PLANTED not in redacted
    assert json.loads(redacted) == {
        "password": REDACTED,
        "tokens_used": 1234,
        "headers": {"Authorization": f"Bearer {REDACTED}"},
        "db_password": REDACTED,
        "rows": 7,
    }


def test_a_python_dict_repr_is_redacted(redactor: Redactor) -> None:
    """A dict printed with ``repr`` (single-quoted keys) hides its secret values."""
    text = repr({"password": PLANTED, "api_key": "it's", "user": "bob"})
    assert (
        redactor.redact(text)
        == "{'password': '[REDACTED]', 'api_key': \"[REDACTED]\", 'user': 'bob'}"
    )


def test_text_without_secrets_is_unchanged(redactor: Redactor) -> None:
    """Ordinary output (times, colons, URLs without passwords, key=value pairs) is kept."""
    text = "12:00:00 INFO sync: copied rows=120 to https://example.com:8443/a?b=c name: x\n" * 50
    assert redactor.redact(text) == text


def test_a_custom_pattern_hides_its_group_or_its_whole_match() -> None:
    """A pattern with a group hides the group; one without hides its whole match; a
    look-around pattern (which RE2 cannot run) works too."""
    custom = [r"ghp_[A-Za-z0-9]{8,}", r"session (\w+)", r"(?<=card )\d{4}"]
    redactor = Redactor.of(custom)
    text = "push with ghp_abcdEFGH1234 for session s3cr3tid, card 4242"
    assert redactor.redact(text) == "push with [REDACTED] for session [REDACTED], card [REDACTED]"
    assert redactor.patterns == (*DEFAULT_REDACT_PATTERNS, *custom)


def test_custom_patterns_with_the_same_group_name_still_apply() -> None:
    """Two patterns using the same group name (which cannot share one expression) each
    still apply."""
    redactor = Redactor.of([r"alpha=(?P<v>\w+)", r"beta=(?P<v>\w+)"])
    assert redactor.redact("alpha=1 beta=2") == "alpha=[REDACTED] beta=[REDACTED]"


def test_a_literal_secret_is_hidden_wherever_it_appears() -> None:
    """A secret given literally (regex characters and all) is hidden anywhere, also where
    a pattern's value would have stopped inside it; secrets under 3 characters are not."""
    secret = "p&ss.w*rd"
    redactor = Redactor.of(secrets=[secret, "ab"])
    text = f"echo {secret}; login password={secret} ok; ab"
    assert redactor.redact(text) == "echo [REDACTED]; login password=[REDACTED] ok; ab"


def test_a_bad_pattern_is_a_value_error_naming_it() -> None:
    """A pattern that does not compile raises ValueError with the pattern in the message."""
    with pytest.raises(ValueError, match=r"redact pattern '\(unclosed\[' is not a valid regex"):
        Redactor.of(["fine", "(unclosed["])


def _always_holds(items: object, chars: set[str]) -> bool:
    """Whether every match of a parsed expression (``re._parser``'s items) holds one of
    ``chars``: some element of the sequence that every match goes through does."""
    return any(_item_holds(op, av, chars) for op, av in items)  # type: ignore[attr-defined]


def _item_holds(op: object, av: object, chars: set[str]) -> bool:
    """Whether every match of one parsed element holds one of ``chars``; False for any
    element this does not know (the answer must be sure, not likely)."""
    name = str(op)
    if name == "LITERAL":
        return chr(av) in chars  # type: ignore[arg-type]
    if name == "IN":  # a class: sure only if each of its members is one of ``chars``
        return all(str(o) == "LITERAL" and chr(a) in chars for o, a in av)  # type: ignore[attr-defined]
    if name == "SUBPATTERN":  # (group, add_flags, del_flags, items)
        return _always_holds(av[3], chars)  # type: ignore[index]
    if name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):  # (min, max, items)
        return av[0] >= 1 and _always_holds(av[2], chars)  # type: ignore[index]
    if name == "BRANCH":  # (None, [items, ...]): each alternative must
        return all(_always_holds(branch, chars) for branch in av[1])  # type: ignore[index]
    if name == "ATOMIC_GROUP":
        return _always_holds(av, chars)
    return False


@pytest.mark.parametrize("pattern", DEFAULT_REDACT_PATTERNS)
def test_every_default_pattern_match_holds_a_character_the_redactor_looks_for(
    pattern: str,
) -> None:
    """The redactor leaves text without ``:`` and ``=`` unsearched when it has only the
    default patterns: proven here on each pattern's parse (every path through it takes a
    ``:`` or a ``=``, neither of which has a case to fold), not by trying texts."""
    import re._parser  # the standard library's own parse of the pattern

    assert DEFAULT_PATTERNS_NEED == (":", "=")
    assert _always_holds(re._parser.parse(pattern), set(DEFAULT_PATTERNS_NEED))
    assert not _always_holds(re._parser.parse(r"(?:a|:)b"), {":"})  # the check can say no
    assert not _always_holds(re._parser.parse(r"x[:=]?"), {":", "="})
    assert not _always_holds(re._parser.parse(r"x[^\s]"), {":", "="})


def test_text_without_colon_or_equals_still_loses_secrets_and_custom_matches() -> None:
    """With the default patterns alone, text without ``:`` and ``=`` skips the patterns but
    not the literal secrets; with a custom pattern such text is searched as before."""
    text = "deploy with hunter2-secret-value as the token of bob"
    assert Redactor.of(secrets=["hunter2-secret-value"]).redact(text) == (
        "deploy with [REDACTED] as the token of bob"
    )
    assert Redactor.of([r"of (\w+)"]).redact(text) == (
        "deploy with hunter2-secret-value as the token of [REDACTED]"
    )
    assert Redactor.of().redact("token: abc") == "token: [REDACTED]"
