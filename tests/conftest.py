"""Shared fixtures."""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.comfy_server import ComfyServer, start_server


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComfyServer]:
    """A real ComfyUI 0.3.75 server on CPU with this pack installed (installs ComfyUI on first use)."""
    server = start_server(tmp_path_factory.mktemp("comfy_base"))
    try:
        yield server
    finally:
        server.stop()
