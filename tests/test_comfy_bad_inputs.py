"""Bad inputs, errors and Cancel in a real ComfyUI server: every case is refused with a message that names the
problem and the fix, from the node that should catch it; the server serves the next prompt; no file is left in the
output folder; and the demo model's MODEL, CLIP and VAE stay bit-identical (sha256 of their full state dicts).

The server writes no file larger than CAP_BYTES (RLIMIT_FSIZE), so saving a full checkpoint (about 20 MB) meets the
same error a full disk gives, without privileges. Every case builds on one small, valid unlearning chain (two forget
prompts, three retain prompts, 4 sampler steps, one round), whose scores ComfyUI keeps cached between cases.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from tests.comfy_server import ComfyError, ComfyServer, start_server
from tests.razor_graphs import small_unlearning_chain

CAP_BYTES = 8 * 2**20
NAN, INF = float("nan"), float("inf")
FORGET = "a star in neon style => a star\na heart in neon style => a heart"
RETAIN = "a star in brick style\na heart in grass style\na circle in dots style"
GOOD_EDIT = "good_edit.safetensors"   # the chain's saved edit, copied into models/loras


def chain(until: str = "save", **overrides) -> dict:
    """The valid chain up to node `until` ('score', 'grow', 'apply' or 'save'); `overrides` replace inputs, keyed
    `node__input`."""
    graph = small_unlearning_chain("neon", "style", FORGET, RETAIN, filename_prefix="razor/catalogue")
    graph["applied"] = {"class_type": "RazorFingerprint", "inputs": {"model": ["apply", 0], "clip": ["apply", 1],
                                                                     "label": "applied"}}
    order = ["load", "forget", "latent", "score", "grow", "apply", "applied", "save"]
    keep = order[:order.index(until) + 1] + (["applied"] if until == "apply" else [])
    graph = {k: v for k, v in graph.items() if k in keep}
    for key, value in overrides.items():
        node, name = key.split("__")
        if value is None:
            graph[node]["inputs"].pop(name)
        else:
            graph[node]["inputs"][name] = value
    return graph


def with_nodes(graph: dict, **nodes: dict) -> dict:
    return {**graph, **nodes}


def image_nodes(width: int = 32) -> dict:
    return {"img": {"class_type": "EmptyImage", "inputs": {"width": width, "height": width, "batch_size": 2,
                                                           "color": 0x336699}}}


def fingerprint_graph(label: str, model: list | None = None) -> dict:
    return {"load": {"class_type": "RazorLoadMiniCanvas", "inputs": {}},
            "fp": {"class_type": "RazorFingerprint", "inputs": {
                "model": model or ["load", 0], "clip": ["load", 1], "vae": ["load", 2], "label": label}}}


def below_minimum(name: str) -> str:
    """ComfyUI's own validation message for a number below its input's minimum (it names the input)."""
    return f'smaller than min of -?\\d+", "details": "{name}"'


@dataclass(frozen=True)
class Case:
    id: str
    graph: Callable[[], dict]
    node: str          # the node type that must refuse it
    error: str         # regex the message must match: the problem and the fix


CASES = [
    # Load Forget Set
    Case("empty concept", lambda: chain("score", forget__concept="   "), "RazorLoadForgetSet",
         "concept is empty: name the style"),
    Case("concept in no forget prompt", lambda: chain("score", forget__forget_prompts="a star in brick style"),
         "RazorLoadForgetSet", "mentions neither .* every forget prompt must invoke the concept"),
    Case("forget prompts = retain prompts", lambda: chain(
        "score", forget__retain_prompts="a star in neon style\na heart in neon style"),
        "RazorLoadForgetSet", "both forget and retain prompts; remove them from one"),
    Case("no forget prompts", lambda: chain("score", forget__forget_prompts="\n  \n"), "RazorLoadForgetSet",
         "no forget prompts .* give at least one prompt"),
    Case("no retain prompts", lambda: chain("score", forget__retain_prompts=""), "RazorLoadForgetSet",
         "no retain prompts: give prompts"),
    Case("no anchor", lambda: chain("score", forget__forget_prompts="a star in neon style"), "RazorLoadForgetSet",
         "has no anchor: type an anchor concept"),
    Case("preset without the concept", lambda: chain("score", forget__preset="MiniCanvas demo",
                                                     forget__concept="van gogh"),
         "RazorLoadForgetSet", "MiniCanvas preset knows .* Pick one of them"),
    Case("preset for identities", lambda: chain("score", forget__preset="MiniCanvas demo", forget__kind="identity"),
         "RazorLoadForgetSet", "MiniCanvas preset knows .* Pick one of them"),
    Case("images with an alpha channel", lambda: with_nodes(
        chain("score", forget__images=["rgba", 0]), **image_nodes(),
        mask={"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 32, "height": 32}},
        rgba={"class_type": "JoinImageWithAlpha", "inputs": {"image": ["img", 0], "alpha": ["mask", 0]}}),
        "RazorLoadForgetSet", "must be RGB.* drop the alpha channel"),
    Case("images with NaN", lambda: with_nodes(
        chain("score", forget__images=["nan", 0]), **image_nodes(),
        nan={"class_type": "ImageBlend", "inputs": {"image1": ["img", 0], "image2": ["img", 0],
                                                    "blend_factor": NAN, "blend_mode": "normal"}}),
        "RazorLoadForgetSet", "NaN or inf values; fix or drop"),
    Case("images of the wrong size", lambda: with_nodes(chain("score", forget__images=["img", 0]),
                                                        **image_nodes(16)),
         "RazorScoreHeads", "images are 3x16x16 pixels, but this model works on 3x32x32"),
    # Score Heads
    Case("cfg is NaN", lambda: chain("score", score__cfg=NAN), "RazorScoreHeads", "input cfg is nan: type a finite"),
    Case("model weights with NaN", lambda: with_nodes(
        chain("score", score__model=["merged", 0]),
        merged={"class_type": "ModelMergeSimple", "inputs": {"model1": ["load", 0], "model2": ["load", 0],
                                                             "ratio": NAN}}),
        "RazorScoreHeads", "weights contain NaN or inf .* load the model again without it"),
    Case("seed out of range", lambda: chain("score", score__seed=-1), "RazorScoreHeads", below_minimum("seed")),
    # Grow Edit Set
    Case("scores of another model", lambda: with_nodes(
        chain("grow", grow__model=["other", 0]),
        other={"class_type": "ModelSamplingDiscrete", "inputs": {"model": ["load", 0], "sampling": "eps",
                                                                 "zsnr": False}}),
        "RazorGrowEditSet", "computed on another MODEL/CLIP .* connect the same MODEL"),
    Case("scores of another forget set", lambda: with_nodes(
        chain("grow", grow__forget_set=["forget2", 0]),
        forget2={"class_type": "RazorLoadForgetSet", "inputs": {
            "concept": "neon", "kind": "style", "preset": "custom", "forget_prompts": FORGET, "anchor": "",
            "retain_prompts": "a circle in grass style"}}),
        "RazorGrowEditSet", "another forget set: connect the same Load Forget Set"),
    Case("forget target is NaN", lambda: chain("grow", grow__forget_target=NAN), "RazorGrowEditSet",
         "input forget_target is nan: type a finite"),
    Case("retain tolerance is NaN", lambda: chain("grow", grow__retain_tolerance=NAN), "RazorGrowEditSet",
         "input retain_tolerance is nan: type a finite"),
    Case("round budget 0", lambda: chain("grow", grow__max_rounds=0), "RazorGrowEditSet",
         below_minimum("max_rounds")),
    Case("negative unit budget", lambda: chain("grow", grow__max_initial_units=-3), "RazorGrowEditSet",
         below_minimum("max_initial_units")),
    # Apply RAZOR Edit
    Case("edit applied twice (other weights)", lambda: with_nodes(
        chain("apply"), twice={"class_type": "RazorApplyEdit", "inputs": {
            "model": ["apply", 0], "edit": ["grow", 0], "strength": 1.0, "clip": ["apply", 1]}},
        twice_fp={"class_type": "RazorFingerprint", "inputs": {"model": ["twice", 0], "label": "twice"}}),
        "RazorApplyEdit", "different base weights \\(fingerprint mismatch\\); apply it to the model it was computed"),
    Case("text-encoder edit without its CLIP", lambda: chain("apply", score__blocks="text_encoder", apply__clip=None),
         "RazorApplyEdit", "changes the text encoder .*: connect the CLIP too"),
    Case("strength is NaN", lambda: chain("apply", apply__strength=NAN), "RazorApplyEdit",
         "input strength is nan: type a finite"),
    # Load RAZOR Edit (files prepared by the `prepared` fixture)
    *[Case(f"edit file: {name}", (lambda n=name: load_edit_graph(n)), node, error) for name, node, error in (
        ("random bytes", "RazorLoadEdit", "not a readable safetensors edit file .* re-save the edit"),
        ("truncated", "RazorLoadEdit", "not a readable safetensors edit file .* re-save the edit"),
        ("a plain LoRA", "RazorLoadEdit", "lacks RAZOR metadata .* not written by this pack"),
        ("broken metadata", "RazorLoadEdit", "inconsistent RAZOR metadata .* re-save the edit"),
        ("NaN in a delta", "RazorLoadEdit", "not finite floating point \\(NaN or inf\\); the file is damaged"),
        ("slice outside its tensor", "RazorLoadEdit", "lies outside its delta .* the file is damaged"),
        ("made for another model", "RazorApplyEdit", "fingerprint mismatch\\); apply it to the model"),
    )],
    # Save Unlearned Model
    Case("file name with ..", lambda: chain(save__filename_prefix="razor/../../escape"), "RazorSaveUnlearnedModel",
         "climbs out with '..'; files are saved inside ComfyUI's output folder only: remove"),
    Case("absolute file name", lambda: chain(save__filename_prefix="/tmp/razor_escape"), "RazorSaveUnlearnedModel",
         "is an absolute path; files are saved inside ComfyUI's output folder only"),
    Case("empty file name", lambda: chain(save__filename_prefix=" "), "RazorSaveUnlearnedModel",
         "filename_prefix is empty: type a name"),
    Case("full checkpoint without VAE", lambda: chain(save__format="full checkpoint", save__model=["load", 0],
                                                      save__clip=["load", 1]),
         "RazorSaveUnlearnedModel", "full checkpoint needs MODEL, CLIP and VAE: connect all three"),
    Case("a file where the folder should be", lambda: chain(save__filename_prefix="blocker/edit"),
         "RazorSaveUnlearnedModel", "cannot save under 'blocker/edit': Not a directory .* choose another"),
    Case("read-only output folder", lambda: chain(save__filename_prefix="readonly/edit"), "RazorSaveUnlearnedModel",
         "could not write .*(Permission denied|Operation not permitted). Check the free disk space and that the "
         "folder is writable; nothing was written"),
    Case("disk full", lambda: chain(save__format="full checkpoint", save__model=["load", 0],
                                    save__clip=["load", 1], save__vae=["load", 2]),
         "RazorSaveUnlearnedModel", "could not write .*File too large.*Check the free disk space .* nothing was "
                                    "written"),
]


def load_edit_graph(name: str) -> dict:
    graph = chain("load")
    graph["edit"] = {"class_type": "RazorLoadEdit", "inputs": {"edit_name": edit_file_name(name)}}
    graph["apply"] = {"class_type": "RazorApplyEdit", "inputs": {"model": ["load", 0], "edit": ["edit", 0],
                                                                 "strength": 1.0, "clip": ["load", 1]}}
    graph["fp"] = {"class_type": "RazorFingerprint", "inputs": {"model": ["apply", 0], "label": name}}
    return graph


def edit_file_name(case: str) -> str:
    return "bad_" + case.replace(" ", "_") + ".safetensors"


def write_bad_edit_files(good: Path, loras: Path) -> None:
    """One damaged or foreign variant of a real edit file per edit-file case."""
    with safe_open(str(good), framework="pt") as fh:
        meta, tensors = fh.metadata(), {k: fh.get_tensor(k) for k in fh.keys()}
    raw = good.read_bytes()
    units = json.loads(meta["razor.units"])
    key_map = json.loads(meta["razor.key_map"])
    head = next(u for u in units if any(s["dim"] is not None for s in u["slices"]))
    sliced = next(s for s in head["slices"] if s["dim"] is not None)
    sliced_key = next(k for k in tensors if k.startswith(key_map[sliced["param"]].rsplit(".", 1)[0] + "."))
    first = next(iter(tensors))
    (loras / edit_file_name("random bytes")).write_bytes(os.urandom(4096))
    (loras / edit_file_name("truncated")).write_bytes(raw[: len(raw) // 2])
    save_file(tensors, str(loras / edit_file_name("a plain LoRA")))
    save_file(tensors, str(loras / edit_file_name("broken metadata")), {**meta, "razor.units": "[{'name':"})
    save_file({**tensors, first: torch.full_like(tensors[first], NAN)}, str(loras / edit_file_name("NaN in a delta")),
              meta)
    save_file({**tensors, sliced_key: tensors[sliced_key].narrow(sliced["dim"], 0, 1).contiguous()},
              str(loras / edit_file_name("slice outside its tensor")), meta)
    save_file(tensors, str(loras / edit_file_name("made for another model")), {**meta, "razor.fingerprint": "0" * 64})


def make_read_only(folder: Path) -> Callable[[], None] | None:
    """A folder nothing can be written into, even by root (chattr +i) where that is allowed; returns the undo."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return lambda: folder.chmod(0o755)
    if shutil.which("chattr") and subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0:
        return lambda: subprocess.run(["chattr", "-i", str(folder)], check=True)
    return None


def output_files(server: ComfyServer) -> set[str]:
    """Every file under the output folder, hidden temporary files included."""
    root = server.base_dir / "output"
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def model_fingerprint(server: ComfyServer, label: str) -> str:
    """The untouched MODEL/CLIP/VAE's fingerprint, in a prompt that also runs the valid chain up to Grow Edit Set
    (cached: ComfyUI keeps only the last prompt's outputs, so this keeps the scores for the next case)."""
    return server.run({**chain("grow"), **fingerprint_graph(label)}, timeout=600)["fp"]["text"][0]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComfyServer]:
    server = start_server(tmp_path_factory.mktemp("comfy_guarded"), max_file_bytes=CAP_BYTES)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def prepared(server: ComfyServer) -> Iterator[dict]:
    """The untouched model's fingerprint, one good run of the chain (its edit saved and copied into models/loras,
    with the damaged variants beside it), a file where a folder should be, and a read-only folder."""
    original = model_fingerprint(server, "original")
    outputs = server.run(chain(), timeout=600)
    saved = server.base_dir / "output" / outputs["save"]["text"][0].split()[1]
    loras = server.base_dir / "models" / "loras"
    loras.mkdir(parents=True, exist_ok=True)
    shutil.copy(saved, loras / GOOD_EDIT)
    write_bad_edit_files(saved, loras)
    (server.base_dir / "output" / "blocker").write_text("a file, not a folder")
    undo_read_only = make_read_only(server.base_dir / "output" / "readonly")
    try:
        yield {"original": original, "applied": outputs["applied"]["text"][0], "read_only": undo_read_only}
    finally:
        if undo_read_only:
            undo_read_only()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_clearly_and_harmlessly(server: ComfyServer, prepared: dict, case: Case):
    assert len(CASES) >= 25
    if case.id == "read-only output folder" and prepared["read_only"] is None:
        pytest.skip("running as root without chattr: no way to make a folder read-only here")
    files = output_files(server)
    with pytest.raises(ComfyError, match=case.error) as refused:
        server.run(case.graph(), timeout=600)
    assert case.node in str(refused.value), f"refused by another node than {case.node}: {refused.value}"
    assert output_files(server) == files, "a file was left in the output folder"
    # The server serves the next prompt, and the original weights are untouched.
    assert model_fingerprint(server, f"after {case.id}") == prepared["original"]


def test_a_good_edit_file_loads_and_applies_like_the_edit_it_was_saved_from(server: ComfyServer, prepared: dict):
    graph = load_edit_graph("good")
    graph["edit"]["inputs"]["edit_name"] = GOOD_EDIT
    graph["fp"]["inputs"]["clip"] = ["apply", 1]
    assert server.run(graph)["fp"]["text"][0] == prepared["applied"]


def test_saving_never_overwrites(server: ComfyServer, prepared: dict):
    folder = server.base_dir / "output" / "razor"
    first = folder / "catalogue_00001_.safetensors"
    content = first.read_bytes()
    saved = server.run(chain())["save"]["text"][0]
    assert "catalogue_00002_.safetensors" in saved
    assert first.read_bytes() == content


def _cancel_while(server: ComfyServer, graph: dict, node_type: str, after_s: float) -> dict:
    """Queue `graph`, press Cancel `after_s` seconds after it starts running; returns the interruption message."""
    files = output_files(server)
    prompt_id = server.queue(graph)
    while not server.is_running(prompt_id):
        time.sleep(0.05)
    time.sleep(after_s)
    server.interrupt()
    with pytest.raises(ComfyError, match="execution_interrupted"):
        server.wait(prompt_id, timeout=600)
    message = next(m[1] for m in server.history_messages(prompt_id) if m[0] == "execution_interrupted")
    assert message["node_type"] == node_type, message
    assert output_files(server) == files
    return message


def test_cancel_during_scoring_and_during_growth_leaves_everything_as_it_was(server: ComfyServer, prepared: dict):
    # The full MiniCanvas forget set (32 forget and 57 retain prompts) keeps each node busy for several seconds.
    preset = {"forget__preset": "MiniCanvas demo", "grow__max_rounds": 6, "grow__forget_target": 1.0}
    _cancel_while(server, chain("save", **preset), "RazorScoreHeads", after_s=3.0)
    assert model_fingerprint(server, "after cancelling the scoring") == prepared["original"]
    server.run(chain("score", forget__preset="MiniCanvas demo"), timeout=600)  # scores cached: growth runs next
    _cancel_while(server, chain("save", **preset), "RazorGrowEditSet", after_s=2.0)
    assert model_fingerprint(server, "after cancelling the growth") == prepared["original"]
