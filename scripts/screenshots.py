"""Screenshots of the workflows in ComfyUI's real frontend (headless Chromium), for the README and as thumbnails of
the workflows that need real SD weights.

    bash scripts/screenshots.sh          # installs Chromium and Playwright if missing, then runs this

For each MiniCanvas workflow the graph is loaded into the page, run with the frontend's own Run button, and shot once
every node shows its result (heat-map, growth curve, report, before/after): docs/screenshots/<name>.png. The SD1.5,
SD3, SDXL and Flux-dev workflows cannot run here (no real weights), so they are shot as graphs and saved as their thumbnails,
workflows/<name>.jpg.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.comfy_server import ComfyServer, start_server  # noqa: E402

WORKFLOWS = REPO / "workflows"
SHOTS = REPO / "docs" / "screenshots"
RUN_AND_SHOOT = ("minicanvas_remove_style", "minicanvas_remove_object", "minicanvas_clip_text_only")
GRAPH_THUMBNAILS = ("sd15_remove_style", "sd3_remove_style", "sdxl_remove_style", "flux_dev_remove_style")
# As the environment notes say: without the background-networking flags Chromium keeps dialling out of a closed
# network; --no-sandbox because these machines run it as root.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
# No first-visit template dialog, no minimap over the graph, and text drawn at any zoom (the whole graph fits only
# at about half size, where the frontend would otherwise draw nodes as blank boxes).
SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False, "LiteGraph.Canvas.MinFontSizeForLOD": 1}


def _new_server() -> ComfyServer:
    base = Path(tempfile.mkdtemp(prefix="razor_screenshots_"))
    settings = base / "user" / "default" / "comfy.settings.json"
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text(json.dumps(SETTINGS))
    return start_server(base)


def _wait_for_idle(server: ComfyServer, timeout: float) -> None:
    """Until the queue is empty again and the last prompt succeeded."""
    deadline = time.monotonic() + timeout
    time.sleep(1.0)
    while time.monotonic() < deadline:
        queue = server.get_json("/queue")
        if not queue["queue_running"] and not queue["queue_pending"]:
            history = server.get_json("/history")
            last = history[max(history, key=lambda k: history[k]["prompt"][0])]
            if last["status"]["status_str"] != "success":
                raise RuntimeError(f"the workflow failed in the browser: {last['status']['messages']}")
            return
        time.sleep(1.0)
    raise TimeoutError(f"the workflow did not finish within {timeout:.0f} s")


# Zoom and pan so that every node and group fills the free part of the window (right of the sidebar, below the
# menus), and return that part of the window, to shoot.
FRAME_JS = """([left, top, width, height]) => {
    const graph = window.app.graph, ds = window.app.canvas.ds, title = 32, pad = 20;
    const boxes = graph._nodes.map(n => [n.pos[0], n.pos[1] - title, n.size[0], n.size[1] + title])
        .concat((graph._groups || []).map(g => g._bounding ? Array.from(g._bounding) : [g.pos[0], g.pos[1], g.size[0], g.size[1]]));
    const x0 = Math.min(...boxes.map(b => b[0])) - pad, y0 = Math.min(...boxes.map(b => b[1])) - pad;
    const x1 = Math.max(...boxes.map(b => b[0] + b[2])) + pad, y1 = Math.max(...boxes.map(b => b[1] + b[3])) + pad;
    const scale = Math.min(width / (x1 - x0), height / (y1 - y0));
    ds.scale = scale;
    ds.offset[0] = left / scale - x0;
    ds.offset[1] = top / scale - y0;
    window.app.canvas.setDirty(true, true);
    return {x: left, y: top, width: Math.round((x1 - x0) * scale), height: Math.round((y1 - y0) * scale)};
}"""
FREE_AREA = (70, 110, 2300, 1200)  # left, top, width, height of the window that no menu covers


def _load(page, workflow: dict) -> dict:
    """Load the workflow and frame it; returns the screen rectangle the graph fills."""
    page.evaluate("(wf) => window.app.loadGraphData(wf)", workflow)
    page.wait_for_timeout(1500)
    clip = page.evaluate(FRAME_JS, list(FREE_AREA))
    page.wait_for_timeout(1000)
    return clip


def _close_banners(page) -> None:
    """The frontend's announcement bar covers the top of the graph."""
    for banner in page.locator("div.bg-gradient-to-r").all():
        if banner.is_visible():
            banner.locator("button").last.click()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chromium", default="/usr/bin/chromium", help="the browser to drive")
    parser.add_argument("--only", nargs="*", help="workflow names to shoot (default: all)")
    args = parser.parse_args()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sys.exit("needs Playwright: run `bash scripts/screenshots.sh` (it installs Chromium and Playwright)")
    if not Path(args.chromium).exists():
        sys.exit(f"no browser at {args.chromium}: run `bash scripts/screenshots.sh`, or pass --chromium PATH")
    chosen = set(args.only or RUN_AND_SHOOT + GRAPH_THUMBNAILS)
    SHOTS.mkdir(parents=True, exist_ok=True)
    server = _new_server()
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 2400, "height": 1350})
            page.goto(server.url)
            page.wait_for_function("window.app && window.app.graph", timeout=120_000)
            page.wait_for_timeout(2000)
            _close_banners(page)
            for name in [n for n in RUN_AND_SHOOT if n in chosen]:
                clip = _load(page, json.loads((WORKFLOWS / f"{name}.json").read_text()))
                page.get_by_role("button", name="Run", exact=True).first.click()
                _wait_for_idle(server, timeout=900)
                page.wait_for_timeout(3000)  # the previews arrive over the websocket after the prompt ends
                page.screenshot(path=str(SHOTS / f"{name}.png"), clip=clip)
                print("wrote", SHOTS / f"{name}.png")
            for name in [n for n in GRAPH_THUMBNAILS if n in chosen]:
                clip = _load(page, json.loads((WORKFLOWS / f"{name}.json").read_text()))
                shot = SHOTS / f"{name}.png"
                page.screenshot(path=str(shot), clip=clip)
                Image.open(shot).convert("RGB").save(WORKFLOWS / f"{name}.jpg", quality=88)
                shot.unlink()
                print("wrote", WORKFLOWS / f"{name}.jpg")
            browser.close()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
