"""What the benchmarks share: one measurement per fresh Python process (so that its peak resident memory is its own),
and saving their plots."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def run_in_child(module: str, args: list[str]) -> dict:
    """`python -m module *args` must print its result as JSON on its last stdout line."""
    out = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{module} {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def save_figure(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
