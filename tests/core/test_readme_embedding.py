"""The README's embedding example runs as written: a scheduler inside a script, a ``@task``
function and a one-time task scheduled through the client, whose printed output is read back
from its run."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def embedding_example() -> str:
    text = README.read_text()
    found = re.search(r"<!-- embedding-example -->\n```python\n(.*?)```", text, re.DOTALL)
    assert found, "README lost its embedding example"
    return found.group(1)


def test_readme_embedding_example_runs(tmp_path: Path) -> None:
    script = tmp_path / "app.py"
    script.write_text(embedding_example())
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    # The run's print() is captured as its output; the script prints it back from the run row.
    assert done.stdout.splitlines() == ["success one-time reminder", ""], done.stdout
    assert (tmp_path / "app.db").exists()
