"""Start and stop scheduler instances as separate processes (``bench.runner``), and the
bytecode of the tree they import (``precompile_tree``)."""

from __future__ import annotations

import compileall
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

from bench.common import REPO, cpu_seconds, rss_mib


class RunnerProcess:
    """A ``python -m bench.runner`` child; ``start()`` waits for READY, ``stop()`` returns JSON."""

    def __init__(self, url: str, instance_id: str, *, args: list[str] | None = None) -> None:
        self.url = url
        self.instance_id = instance_id
        self.args = args or []
        self.proc: subprocess.Popen[str] | None = None
        self.ready_at: float | None = None

    def start(self, timeout: float = 60.0) -> RunnerProcess:
        """Launch the process and wait until it is registered."""
        return self.launch().wait_ready(timeout)

    def launch(self) -> RunnerProcess:
        """Launch the process without waiting (start several, then ``wait_ready`` each)."""
        env = dict(os.environ, BENCH_DB_URL=self.url, PYTHONPATH=str(REPO))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.runner", "--instance-id", self.instance_id, *self.args],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        return self

    def wait_ready(self, timeout: float = 60.0) -> RunnerProcess:
        """Block until the runner prints READY (bounded by ``timeout``)."""
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                err = self.proc.stderr.read() if self.proc.stderr else ""
                raise RuntimeError(f"runner {self.instance_id} exited before READY: {err[-2000:]}")
            if line.startswith("READY"):
                self.ready_at = float(line.split()[1])
                return self
        self.kill()
        raise RuntimeError(f"runner {self.instance_id} not ready within {timeout}s")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def rss(self) -> dict[str, float]:
        return rss_mib(self.pid)

    def stop(self, timeout: float = 90.0) -> dict[str, Any]:
        """SIGTERM (drain), wait, and return the JSON the runner printed."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return {"error": f"runner {self.instance_id} did not stop within {timeout}s"}
        lines = [ln for ln in out.splitlines() if ln.startswith("{")]
        if self.proc.returncode != 0 or not lines:
            return {"error": f"runner exit {self.proc.returncode}: {err[-2000:]}"}
        result: dict[str, Any] = json.loads(lines[-1])
        return result

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


#: The packages of this tree that schedctl processes import (``bench.jobs`` holds callables).
PRECOMPILED_PACKAGES = ("scheduler_core", "exporter", "bench")


def precompile_tree() -> dict[str, Any]:
    """Compile this tree's packages to bytecode (``__pycache__``), as an installed wheel ships
    them, so that a launched process reads its modules' ``.pyc`` instead of compiling them.
    This machine sets PYTHONDONTWRITEBYTECODE=1, so without this every launch compiled the
    repository's own modules again (~0.13 s of a scheduler's start-up); ``compile_dir``
    writes the files whatever that variable says (it is about imports writing them). What
    it did goes into the JSON output."""
    started = time.perf_counter()
    ok = all(
        compileall.compile_dir(REPO / package, quiet=1, workers=1)
        for package in PRECOMPILED_PACKAGES
    )
    return {
        "what": "compileall of this tree's packages before the launches (as a wheel ships .pyc)",
        "packages": list(PRECOMPILED_PACKAGES),
        "ok": bool(ok),
        "seconds": round(time.perf_counter() - started, 3),
    }


def stop_process(proc: subprocess.Popen[Any], timeout: float = 60.0) -> int | None:
    """SIGTERM, wait, SIGKILL if need be; the exit status (None if it had to be killed)."""
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
        return None
