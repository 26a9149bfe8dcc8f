"""``python -m scheduler_core.cli``: the ``schedctl`` command."""

from __future__ import annotations

import sys
import time

from scheduler_core.cli import main

if hasattr(time, "tzset"):
    time.tzset()
sys.exit(main())
