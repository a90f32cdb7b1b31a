"""The demo: forget the style "neon" from the bundled MiniCanvas model inside a real ComfyUI, headless.

    .venv/bin/python scripts/demo.py [OUT_DIR]        (bash scripts/demo.sh sets everything up first)

Starts ComfyUI 0.3.75 with this pack, runs workflows/minicanvas_remove_style.json through the server's /prompt API
(the same file you can drag into the ComfyUI window), and writes to OUT_DIR (default out/demo): before.png,
after.png (the same prompt and seeds before and after unlearning), heatmap.png, growth.png, the edit file, and
report.txt / report.json with what the MiniCanvas classifiers see in the images.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from razor_core.minicanvas import data  # noqa: E402
from razor_core.minicanvas.classifier import to_model_input  # noqa: E402
from razor_core.minicanvas.pipeline import load_classifier  # noqa: E402
from tests.comfy_server import start_server, ui_workflow_to_api_prompt  # noqa: E402

WORKFLOW = REPO / "workflows" / "minicanvas_remove_style.json"
SCALE = 4  # 32x32 images are enlarged (nearest) so they can be seen


def judge(images: np.ndarray) -> tuple[list[str], list[str]]:
    x = to_model_input(torch.from_numpy(images))
    with torch.no_grad():
        styles = load_classifier("style")(x).argmax(-1).tolist()
        objects = load_classifier("object")(x).argmax(-1).tolist()
    return [data.STYLES[i] for i in styles], [data.OBJECTS[i] for i in objects]


def save_row(images: np.ndarray, path: Path) -> None:
    row = Image.fromarray(np.concatenate(list(images), axis=1))
    row.resize((row.width * SCALE, row.height * SCALE), Image.NEAREST).save(path)


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    server_dir = out / "comfyui_base"
    shutil.rmtree(server_dir, ignore_errors=True)
    print(f"starting ComfyUI (base directory {server_dir}) ...", flush=True)
    server = start_server(server_dir)
    try:
        prompt = ui_workflow_to_api_prompt(json.loads(WORKFLOW.read_text()), server.object_info())
        nodes = {n["class_type"]: i for i, n in prompt.items()}
        stitch = nodes["ImageStitch"]
        preview = next(i for i, n in prompt.items() if n["class_type"] == "PreviewImage"
                       and n["inputs"]["images"][0] == stitch)
        print(f"running {WORKFLOW.name} through /prompt ...", flush=True)
        start = time.time()
        outputs = server.run(prompt, timeout=900)
        seconds = time.time() - start
        pairs = server.images(outputs[preview])
        before, after = pairs[:, :32], pairs[:, -32:]
        save_row(before, out / "before.png")
        save_row(after, out / "after.png")
        Image.fromarray(server.images(outputs[nodes["RazorScoreHeads"]])[0]).save(out / "heatmap.png")
        Image.fromarray(server.images(outputs[nodes["RazorGrowEditSet"]])[0]).save(out / "growth.png")
        saved = outputs[nodes["RazorSaveUnlearnedModel"]]["text"][0].split()[1]
        shutil.copy(server_dir / "output" / saved, out / "neon_edit.safetensors")
        growth_report = outputs[nodes["PreviewAny"]]["text"][0]
    finally:
        server.stop()
    (b_styles, b_objects), (a_styles, a_objects) = judge(before), judge(after)
    prompt_text = prompt[prompt[nodes["KSampler"]]["inputs"]["positive"][0]]["inputs"]["text"]
    report = {
        "workflow": WORKFLOW.name, "prompt": prompt_text, "seconds_unlearning_and_sampling": round(seconds, 1),
        "before": {"neon": b_styles.count("neon"), "star": b_objects.count("star"), "of": len(before)},
        "after": {"neon": a_styles.count("neon"), "star": a_objects.count("star"), "of": len(after),
                  "styles_seen": a_styles},
        "growth_report": growth_report,
    }
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    text = (f"RAZOR demo: forget the style 'neon' from the MiniCanvas model in ComfyUI ({WORKFLOW.name})\n"
            f"prompt {prompt_text!r}, {len(before)} seeds, unlearning + sampling took {seconds:.1f} s\n"
            f"before: the classifiers see neon in {report['before']['neon']}/{len(before)} images, a star in "
            f"{report['before']['star']}/{len(before)}\n"
            f"after:  neon in {report['after']['neon']}/{len(after)}, a star in {report['after']['star']}/"
            f"{len(after)} (styles now: {', '.join(sorted(set(a_styles)))})\n\n{growth_report}\n")
    (out / "report.txt").write_text(text)
    print(text)
    print(f"wrote before.png, after.png, heatmap.png, growth.png, neon_edit.safetensors, report.txt, report.json "
          f"to {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "out" / "demo")
