"""50 unlearning prompts in a row in one ComfyUI server with caching off (benchmarks/repeated_runs.py): the server's
resident memory after warm-up grows by at most 5%, i.e. runs leave nothing behind."""
from __future__ import annotations

from pathlib import Path

from benchmarks.repeated_runs import run_series
from tests.comfy_server import start_server

RUNS = 50
MAX_GROWTH = 0.05


def test_fifty_unlearning_runs_leave_memory_flat(tmp_path: Path):
    server = start_server(tmp_path, extra_args=("--cache-none",))
    try:
        result = run_series(server, RUNS, log=lambda _line: None)
        saved = sorted((tmp_path / "output" / "razor").glob("repeat_*.safetensors"))
    finally:
        server.stop()
    assert len(saved) == RUNS  # every run did the whole chain
    assert result["growth"] <= MAX_GROWTH, result["rss_mb"]
