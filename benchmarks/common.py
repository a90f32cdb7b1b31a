"""What the benchmarks share: one measurement per fresh Python process (so that its peak resident memory is its own),
and saving their plots."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Iterable


def run_in_child(module: str, args: list[str]) -> dict:
    """`python -m module *args` must print its result as JSON on its last stdout line."""
    out = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{module} {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def chosen(parser: argparse.ArgumentParser, value: str, allowed: Iterable[str], what: str = "method") -> list[str]:
    """A comma-separated choice from `allowed`, in the order given; anything else ends the command with an error
    that lists what there is."""
    allowed = list(allowed)
    names = value.split(",")
    unknown = [n for n in names if n not in allowed]
    if unknown:
        parser.error(f"unknown {what}(s) {unknown}; choose from {','.join(allowed)}")
    return names


def save_figure(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
