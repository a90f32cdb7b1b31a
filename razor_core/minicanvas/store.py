"""The committed MiniCanvas weights: where they live, the manifest, and verified loading.

Every weight file is listed in `weights/manifest.json` with its sha256, size, config and how it was trained. Loading
checks the hash before reading a byte of the tensors, so a missing, truncated or altered file fails with a message
that says how to restore it.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
MANIFEST = "manifest.json"
RESTORE_HINT = ("restore it with `git checkout -- razor_core/minicanvas/weights` or retrain with "
                "`.venv/bin/python -m razor_core.minicanvas.train`")


class WeightsError(RuntimeError):
    """A bundled weight file is missing, corrupt or not what the manifest describes."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(weights_dir: Path = WEIGHTS_DIR) -> dict[str, Any]:
    path = weights_dir / MANIFEST
    if not path.is_file():
        raise WeightsError(f"MiniCanvas manifest {path} is missing; {RESTORE_HINT}")
    return json.loads(path.read_text())


def verified_path(name: str, weights_dir: Path = WEIGHTS_DIR) -> Path:
    """Path of a bundled file after checking it exists and matches the manifest's sha256."""
    entry = read_manifest(weights_dir)["files"].get(name)
    if entry is None:
        raise WeightsError(f"{name!r} is not listed in {weights_dir / MANIFEST}; {RESTORE_HINT}")
    path = weights_dir / name
    if not path.is_file():
        raise WeightsError(f"MiniCanvas weight file {path} is missing; {RESTORE_HINT}")
    actual = sha256_of(path)
    if actual != entry["sha256"]:
        raise WeightsError(f"MiniCanvas weight file {path} is corrupt (sha256 {actual[:12]}… but the manifest "
                           f"expects {entry['sha256'][:12]}…); {RESTORE_HINT}")
    return path


def load_tensors(name: str, weights_dir: Path = WEIGHTS_DIR) -> dict[str, torch.Tensor]:
    return load_file(str(verified_path(name, weights_dir)))


def file_config(name: str, weights_dir: Path = WEIGHTS_DIR) -> dict[str, Any]:
    return read_manifest(weights_dir)["files"][name].get("config", {})


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_weights(name: str, tensors: dict[str, torch.Tensor], entry: dict[str, Any],
                 weights_dir: Path = WEIGHTS_DIR) -> None:
    """Write a safetensors file (atomically) and record it in the manifest."""
    path = weights_dir / name
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)
    record_file(name, entry, weights_dir)


def record_file(name: str, entry: dict[str, Any], weights_dir: Path = WEIGHTS_DIR) -> None:
    path = weights_dir / name
    manifest_path = weights_dir / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {"files": {}}
    manifest["files"][name] = {**entry, "sha256": sha256_of(path), "bytes": path.stat().st_size}
    atomic_write_bytes(manifest_path, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode())
