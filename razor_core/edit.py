"""RazorEdit: the result of an unlearning run, its file format, and applying it to a model.

File format (safetensors), keys that ComfyUI's stock LoRA loaders read, so the file reproduces the edit there too;
the stem is the parameter name without `.weight`/`.bias`, mapped through an adapter's key map:
- a weight whose change is confined to a few rows (a head's q, k and v rows) or a few columns (its columns of an
  output projection) is stored exactly as a LoRA pair, `<stem>.lora_up.weight` @ `<stem>.lora_down.weight`, one of
  them a one-hot selector of those rows or columns (no alpha: the loaders then scale by 1); the product has one
  non-zero term per entry, so it equals the change bit for bit. One head of a fused 9216×3072 projection takes
  384×9216 one-byte selector entries and 384×3072 numbers instead of 9216×3072;
- any other weight as a full-shape difference `<stem>.diff`, a bias as `<stem>.diff_b`.
Metadata (strings) holds the units with their exact slices, scores, rounds, concept, settings and a fingerprint of
the base weights.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from . import __version__
from .units import EditUnit, Slice

FORMAT_VERSION = "2"      # 2: LoRA pairs for row/column edits; 1 (full-shape differences only) still reads
READABLE_FORMATS = ("1", "2")
SELECTOR_DTYPE = torch.float8_e4m3fn  # holds 0 and 1 exactly in one byte; the loaders multiply the pair in float32
_META_KEYS = ("razor.format", "razor.units", "razor.concept", "razor.settings", "razor.fingerprint")


class EditFileError(ValueError):
    """An edit file that cannot be used: corrupt, incomplete, or made for another model."""


def fingerprint(params: dict[str, torch.Tensor]) -> str:
    """sha256 over the names, shapes and exact bytes of the given base parameters."""
    digest = hashlib.sha256()
    for name in sorted(params):
        t = params[name].detach().contiguous().cpu().reshape(-1)  # 0-d tensors cannot be viewed as bytes
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def create_file(path: str | Path, write: Callable[[str], None]) -> Path:
    """Create `path` atomically: `write` fills a temporary file in the same folder, which is then hard-linked into
    place, so there is never a half-written file and never an overwrite (the link fails if the name exists)."""
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} already exists; choose another name (edits are never overwritten)")
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        write(tmp)
        os.link(tmp, path)
    except FileExistsError:
        raise FileExistsError(f"{path} appeared while it was being written; choose another name (edits are never "
                              "overwritten)") from None
    except (OSError, SafetensorError) as exc:  # disk full, read-only folder...: say so, and leave nothing behind
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise OSError(f"could not write {path}: {detail}. Check the free disk space and that the folder is "
                      "writable; nothing was written") from exc
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    return path


def _canonical_safetensors(payload: bytes) -> bytes:
    """safetensors writes the metadata in hash-map order, which changes from call to call; the same header with
    sorted keys (same tensors, same offsets, padded to 8 bytes as safetensors does) makes equal edits equal files."""
    size = int.from_bytes(payload[:8], "little")
    header = json.dumps(json.loads(payload[8:8 + size]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    return len(header).to_bytes(8, "little") + header + payload[8 + size:]


def selector_factors(delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(up, down) with up @ down == `delta` exactly, one of them a one-hot selector (in SELECTOR_DTYPE) of the rows
    (or columns) where `delta` is non-zero, when the pair holds fewer numbers than `delta`; None otherwise (or for
    non-matrices)."""
    if delta.dim() != 2:
        return None
    rows = delta.ne(0).any(dim=1).nonzero().flatten()
    cols = delta.ne(0).any(dim=0).nonzero().flatten()
    rank = min(len(rows), len(cols))
    if rank == 0 or rank * sum(delta.shape) >= delta.numel():
        return None
    if len(rows) <= len(cols):
        up = torch.zeros(delta.shape[0], len(rows), dtype=SELECTOR_DTYPE)
        up[rows, torch.arange(len(rows))] = 1
        return up, delta[rows].contiguous()
    down = torch.zeros(len(cols), delta.shape[1], dtype=SELECTOR_DTYPE)
    down[torch.arange(len(cols)), cols] = 1
    return delta[:, cols].contiguous(), down


def _stem(param: str) -> tuple[str, str]:
    for suffix, kind in ((".weight", "diff"), (".bias", "diff_b")):
        if param.endswith(suffix):
            return param[: -len(suffix)], kind
    return param, "diff"


def _product(path: Path, stem: str, up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    if up.dim() != 2 or down.dim() != 2 or up.shape[1] != down.shape[0]:
        raise EditFileError(f"{path}: the LoRA pair of {stem} has shapes {tuple(up.shape)} and {tuple(down.shape)} "
                            "that do not multiply; the file is damaged, re-save the edit")
    # the change's own dtype: the wider factor's (the selector is narrower; float8 does not promote)
    dtype = max((up.dtype, down.dtype), key=lambda d: torch.finfo(d).bits)
    return up.to(dtype) @ down.to(dtype)


@dataclass
class RazorEdit:
    deltas: dict[str, torch.Tensor]        # full-shape Δ per touched parameter, zero outside the units' slices
    units: list[EditUnit]
    concept: str
    settings: dict[str, Any]
    base_fingerprint: str
    scores: list[dict[str, Any]] = field(default_factory=list)
    rounds: list[dict[str, Any]] = field(default_factory=list)

    def __repr__(self) -> str:  # ComfyUI shows node inputs in its error reports: no tensor dumps there
        return (f"RazorEdit(concept={self.concept!r}, units={[u.name for u in self.units]}, "
                f"tensors={len(self.deltas)})")

    def slice_deltas(self) -> dict[Slice, torch.Tensor]:
        """Δ restricted to each unit slice (how head edits are kept: only their own rows/columns)."""
        return {s: s.of(self.deltas[s.param]) for u in self.units for s in u.slices}

    # ---------------------------------------------------------------------------------------------- files
    def to_bytes(self, key_map: Callable[[str], str] = lambda k: k) -> bytes:
        tensors = {}
        for param, delta in self.deltas.items():
            stem, kind = _stem(key_map(param))
            delta = delta.detach().contiguous().cpu()
            factors = selector_factors(delta) if kind == "diff" else None
            if factors is None:
                tensors[f"{stem}.{kind}"] = delta
            else:
                tensors[f"{stem}.lora_up.weight"], tensors[f"{stem}.lora_down.weight"] = factors
        meta = {
            "razor.format": FORMAT_VERSION,
            "razor.pack_version": __version__,
            "razor.units": json.dumps([{"name": u.name, "kind": u.kind, "slices": [asdict(s) for s in u.slices]}
                                       for u in self.units]),
            "razor.concept": self.concept,
            "razor.settings": json.dumps(self.settings, sort_keys=True),
            "razor.fingerprint": self.base_fingerprint,
            "razor.scores": json.dumps(self.scores),
            "razor.rounds": json.dumps(self.rounds),
            "razor.key_map": json.dumps({p: key_map(p) for p in self.deltas}),
        }
        return _canonical_safetensors(save(tensors, metadata=meta))

    def save(self, path: str | Path, key_map: Callable[[str], str] = lambda k: k) -> Path:
        """Write as a new file, atomically; an existing file is never replaced."""
        payload = self.to_bytes(key_map)
        return create_file(path, lambda tmp: Path(tmp).write_bytes(payload))

    @classmethod
    def load(cls, path: str | Path) -> "RazorEdit":
        path = Path(path)
        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
                raw = {k: fh.get_tensor(k) for k in fh.keys()}
        except FileNotFoundError:
            raise
        except Exception as exc:  # safetensors raises its own error types for truncated/corrupt headers
            raise EditFileError(f"{path} is not a readable safetensors edit file ({exc}); re-save the edit") from exc
        missing = [k for k in _META_KEYS if k not in meta]
        if missing:
            raise EditFileError(f"{path} lacks RAZOR metadata {missing}: it was not written by this pack")
        if meta["razor.format"] not in READABLE_FORMATS:
            raise EditFileError(f"{path} has edit format {meta['razor.format']}, this pack reads formats "
                                f"{', '.join(READABLE_FORMATS)}: update the pack")
        try:
            key_map = json.loads(meta.get("razor.key_map", "{}"))
            units = [EditUnit(u["name"], u["kind"], tuple(Slice(**s) for s in u["slices"]))
                     for u in json.loads(meta["razor.units"])]
            deltas = {}
            for param, mapped in key_map.items():
                stem, kind = _stem(mapped)
                deltas[param] = raw[f"{stem}.{kind}"] if f"{stem}.{kind}" in raw else _product(
                    path, stem, raw[f"{stem}.lora_up.weight"], raw[f"{stem}.lora_down.weight"])
            edit = cls(deltas, units, meta["razor.concept"], json.loads(meta["razor.settings"]),
                       meta["razor.fingerprint"], json.loads(meta.get("razor.scores", "[]")),
                       json.loads(meta.get("razor.rounds", "[]")))
        except (KeyError, TypeError, json.JSONDecodeError) as exc:
            raise EditFileError(f"{path} has inconsistent RAZOR metadata ({exc}); re-save the edit") from exc
        edit._check_consistent(path)
        return edit

    def _check_consistent(self, path: Path) -> None:
        """What a loaded file must satisfy before it touches a model."""
        if len(self.base_fingerprint) != 64 or any(c not in "0123456789abcdef" for c in self.base_fingerprint):
            raise EditFileError(f"{path}: its base fingerprint is not a sha256 hex digest; re-save the edit")
        for unit in self.units:
            for s in unit.slices:
                if s.param not in self.deltas:
                    raise EditFileError(f"{path}: unit {unit.name} names {s.param}, which has no delta tensor")
                shape = self.deltas[s.param].shape
                if s.dim is not None and not (0 <= s.dim < len(shape) and 0 <= s.start
                                              and s.start + s.length <= shape[s.dim]):
                    raise EditFileError(f"{path}: unit {unit.name}'s slice of {s.param} lies outside its delta "
                                        f"{tuple(shape)}; the file is damaged, re-save the edit")
        for name, delta in self.deltas.items():
            if not delta.is_floating_point() or not torch.isfinite(delta).all():
                raise EditFileError(f"{path}: the delta of {name} is not finite floating point (NaN or inf); the "
                                    "file is damaged, re-save the edit")

    # ---------------------------------------------------------------------------------------------- apply
    def check_base(self, params: dict[str, torch.Tensor]) -> None:
        """Raise unless `params` (the touched parameters of a model) are the weights this edit was made for."""
        missing = sorted(set(self.deltas) - set(params))
        if missing:
            raise EditFileError(f"the model has no parameter(s) {missing[:3]}: this edit is for another model family")
        for name, delta in self.deltas.items():
            if params[name].shape != delta.shape:
                raise EditFileError(f"shape mismatch for {name}: model {tuple(params[name].shape)} vs edit "
                                    f"{tuple(delta.shape)}; this edit is for another model")
        if fingerprint({k: params[k] for k in self.deltas}) != self.base_fingerprint:
            raise EditFileError("this edit was made for different base weights (fingerprint mismatch); apply it to "
                                "the model it was computed on, or recompute it for this one")

    @torch.no_grad()
    def apply_to(self, module: torch.nn.Module, strength: float = 1.0) -> dict[str, torch.Tensor]:
        """Add strength·Δ to a plain torch module's parameters; returns the originals for `revert`."""
        params = dict(module.named_parameters())
        self.check_base(params)
        backup = {}
        for name, delta in self.deltas.items():
            backup[name] = params[name].detach().clone()
            params[name].add_(strength * delta.to(params[name].dtype))
        return backup

    @staticmethod
    @torch.no_grad()
    def revert(module: torch.nn.Module, backup: dict[str, torch.Tensor]) -> None:
        """Restore the exact original values saved by `apply_to`."""
        params = dict(module.named_parameters())
        for name, original in backup.items():
            params[name].copy_(original)
