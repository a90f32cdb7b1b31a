"""Run one measurement in a fresh Python process, so that its peak resident memory is its own."""
from __future__ import annotations

import json
import subprocess
import sys


def run_in_child(module: str, args: list[str]) -> dict:
    """`python -m module *args` must print its result as JSON on its last stdout line."""
    out = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{module} {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])
