"""Task callables of the status page's browser tests: what they log and raise is markup, which
the page must show as text."""

from __future__ import annotations

import logging

#: The issue's payload, and one whose handler would leave a trace the test can look for.
XSS_ALERT = "<img src=x onerror=alert(1)>"
XSS_FLAG = '<img src=x onerror="window.__schedctlXss=1">'
OUTPUT_LINE = "hello <script>window.__schedctlOutputXss=1</script> & goodbye"

log = logging.getLogger("tests.exporter.ui_jobs")
# pytest leaves the root logger at WARNING; the run keeps what its logger lets through.
log.setLevel(logging.INFO)


def say_hello() -> dict[str, int]:
    """Log one line of markup (the run's output) and return a result."""
    log.info(OUTPUT_LINE)
    return {"lines": 1}


def fail_with_markup() -> None:
    """Fail with markup in the error message."""
    raise RuntimeError(f"cannot parse {XSS_ALERT} {XSS_FLAG}")


def do_nothing() -> None:
    """Succeed silently."""
