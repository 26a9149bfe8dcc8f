"""Create the peers' own virtual environments (APScheduler 3 and 4 cannot share one)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCH = HERE.parent
PEERS = {"aps3": "requirements-aps3.txt", "aps4": "requirements-aps4.txt"}


class PeerUnavailableError(RuntimeError):
    """A peer's environment could not be created (no package index, say)."""


def peer_python(name: str) -> Path:
    """The interpreter of peer ``name``'s environment, created or updated when needed."""
    requirements = HERE / PEERS[name]
    venv = BENCH / f".venv-{name}"
    python = venv / "bin" / "python"
    stamp = venv / ".requirements-sha256"
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()
    if python.exists() and stamp.exists() and stamp.read_text() == digest:
        return python
    try:
        if not python.exists():
            subprocess.run(
                [sys.executable, "-m", "venv", str(venv)],
                check=True,
                capture_output=True,
                timeout=300,
            )
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "-r", str(requirements)],
            check=True,
            capture_output=True,
            timeout=900,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        text = detail.decode(errors="replace") if isinstance(detail, bytes) else str(detail)
        raise PeerUnavailableError(
            f"could not install {requirements.name} into {venv.name}: "
            f"{type(exc).__name__} {text.strip().splitlines()[-1:]}"
        ) from exc
    stamp.write_text(digest)
    return python
