"""A real ComfyUI server for tests: install, start, talk to it over HTTP, and convert UI workflows to API prompts.

ComfyUI 0.3.75 is installed into .comfyui/ by scripts/setup_comfyui.sh (a fast no-op once done). Each server gets a
fresh --base-directory whose custom_nodes/ links to this repository, so it loads this pack and nothing else, and
writes its outputs, temp files and database there.
"""
from __future__ import annotations

import io
import json
import resource
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
COMFY_DIR = REPO_ROOT / ".comfyui" / "ComfyUI"
SETUP_SCRIPT = REPO_ROOT / "scripts" / "setup_comfyui.sh"
PACK_DIR_NAME = "comfyui-razor"

# Frontend-only nodes that carry text for people and never run.
NOTE_NODE_TYPES = ("Note", "MarkdownNote")
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
# The frontend stores the "control after generate" choice as an extra widget value right after its seed widget.
CONTROL_AFTER_GENERATE_VALUES = ("fixed", "increment", "decrement", "randomize")


def ensure_comfyui_installed() -> Path:
    """Install ComfyUI into .comfyui/ if it is missing or outdated; returns its directory."""
    result = subprocess.run(["bash", str(SETUP_SCRIPT)], cwd=REPO_ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{SETUP_SCRIPT.name} failed (exit {result.returncode}); run `bash scripts/setup.sh && "
                           f"bash scripts/setup_comfyui.sh` to see why.\n{result.stdout[-4000:]}"
                           f"{result.stderr[-4000:]}")
    return COMFY_DIR


def make_base_directory(base_dir: Path) -> Path:
    """A ComfyUI --base-directory whose only custom node pack is this repository."""
    for sub in ("custom_nodes", "models", "input", "output", "temp", "user/default"):
        (base_dir / sub).mkdir(parents=True, exist_ok=True)
    link = base_dir / "custom_nodes" / PACK_DIR_NAME
    if not link.exists():
        link.symlink_to(REPO_ROOT, target_is_directory=True)
    return base_dir


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyError(RuntimeError):
    """The server refused a prompt or a node failed; the message is the server's own error text."""


@dataclass
class ComfyServer:
    url: str
    process: subprocess.Popen
    base_dir: Path
    log_path: Path

    @property
    def pack_dir(self) -> Path:
        return self.base_dir / "custom_nodes" / PACK_DIR_NAME

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _request(self, path: str, payload: dict | None = None, timeout: float = 30.0) -> bytes:
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(self.url + path, data=data,
                                         headers={"Content-Type": "application/json"} if data else {})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read()

    def get_json(self, path: str) -> Any:
        return json.loads(self._request(path))

    def object_info(self, node_type: str | None = None) -> dict:
        """Node definitions: all of them, or `{node_type: definition}`."""
        return self.get_json("/object_info" + (f"/{urllib.parse.quote(node_type)}" if node_type else ""))

    def run(self, prompt: dict, timeout: float = 300.0) -> dict:
        """Queue an API-format prompt, wait for it, and return its history outputs `{node_id: ui output}`."""
        return self.wait(self.queue(prompt), timeout)

    def queue(self, prompt: dict) -> str:
        """Queue an API-format prompt (the server validates it first); returns its prompt id. A prompt with some
        invalid nodes is refused here too: the server would run only its valid outputs (and the frontend marks the
        invalid nodes)."""
        try:
            queued = json.loads(self._request("/prompt", {"prompt": prompt, "client_id": uuid.uuid4().hex}))
        except urllib.error.HTTPError as err:
            raise ComfyError(f"the server refused the prompt ({err.code}): {err.read().decode(errors='replace')}"
                             ) from err
        if queued.get("node_errors"):
            raise ComfyError(f"the server refused some nodes of the prompt: {json.dumps(queued['node_errors'])}")
        return queued["prompt_id"]

    def is_running(self, prompt_id: str) -> bool:
        return any(item[1] == prompt_id for item in self.get_json("/queue")["queue_running"])

    def interrupt(self) -> None:
        """What the frontend's Cancel button sends."""
        self._request("/interrupt", {})

    def history_messages(self, prompt_id: str) -> list:
        return self.get_json(f"/history/{prompt_id}")[prompt_id]["status"]["messages"]

    def wait(self, prompt_id: str, timeout: float = 300.0) -> dict:
        """Wait for a queued prompt; its history outputs, or ComfyError with the server's error messages."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.get_json(f"/history/{prompt_id}").get(prompt_id)
            if entry:  # the server records a prompt in its history once it has finished
                if entry["status"]["status_str"] != "success":
                    messages = entry["status"]["messages"]
                    errors = [m[1] for m in messages if m[0] == "execution_error"] or messages
                    raise ComfyError(f"prompt {prompt_id} failed: {json.dumps(errors, indent=1)}")
                return entry["outputs"]
            self._check_alive()
            time.sleep(0.1)
        raise ComfyError(f"prompt {prompt_id} did not finish within {timeout:.0f} s; server log tail:\n"
                         f"{self.log_text()[-3000:]}")

    def image(self, filename: str, subfolder: str = "", type: str = "output") -> np.ndarray:
        """An image the server wrote (as listed in a node's ui output), as (H, W, 3) uint8."""
        query = urllib.parse.urlencode({"filename": filename, "subfolder": subfolder, "type": type})
        return np.asarray(Image.open(io.BytesIO(self._request(f"/view?{query}"))).convert("RGB"))

    def images(self, ui_output: dict) -> np.ndarray:
        """Every image of one node's ui output, as (N, H, W, 3) uint8."""
        return np.stack([self.image(i["filename"], i["subfolder"], i["type"]) for i in ui_output["images"]])

    def rss_mb(self) -> float:
        """The server process's resident memory now."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))) / 1024

    def _check_alive(self) -> None:
        if self.process.poll() is not None:
            raise ComfyError(f"the ComfyUI server exited with code {self.process.returncode}; log tail:\n"
                             f"{self.log_text()[-3000:]}")

    def wait_until_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                self._request("/system_stats", timeout=2.0)
                return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.2)
        self.stop()
        raise ComfyError(f"the ComfyUI server did not answer within {timeout:.0f} s; log tail:\n"
                         f"{self.log_text()[-3000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_server(base_dir: Path, timeout: float = 180.0, max_file_bytes: int | None = None,
                 extra_args: tuple[str, ...] = ()) -> ComfyServer:
    """Start ComfyUI headless on CPU with this pack, on a free local port, and wait until it answers.
    `max_file_bytes` caps the size of any file the server writes (RLIMIT_FSIZE; Python ignores SIGXFSZ, so a write
    past it fails with EFBIG): how tests simulate a full disk without privileges."""
    comfy_dir = ensure_comfyui_installed()
    make_base_directory(base_dir)
    port = free_port()
    log_path = base_dir / "server.log"
    command = [
        sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
        "--base-directory", str(base_dir),
        # The default database lives in ComfyUI's own user/ folder, which the bundled copy lacks.
        "--database-url", f"sqlite:///{base_dir / 'user' / 'comfyui.db'}",
        "--disable-auto-launch", *extra_args,
    ]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=comfy_dir, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, preexec_fn=None if max_file_bytes is None else (
                                       lambda: resource.setrlimit(resource.RLIMIT_FSIZE,
                                                                  (max_file_bytes, max_file_bytes))))
    server = ComfyServer(f"http://127.0.0.1:{port}", process, base_dir, log_path)
    server.wait_until_ready(timeout)
    return server


def _widget_inputs(definition: dict) -> list[tuple[str, list]]:
    """The node's widget inputs in the frontend's order (input_order: required, then optional)."""
    order = definition.get("input_order") or {s: list(definition["input"].get(s, {})) for s in ("required",
                                                                                                 "optional")}
    widgets = []
    for section in ("required", "optional"):
        for name in order.get(section, []):
            spec = definition["input"][section][name]
            kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
            if (isinstance(kind, list) or kind in WIDGET_TYPES) and not options.get("forceInput"):
                widgets.append((name, spec))
    return widgets


def _takes_control_value(name: str, spec: list) -> bool:
    options = spec[1] if len(spec) > 1 else {}
    return bool(options.get("control_after_generate")) or name in ("seed", "noise_seed")


def ui_workflow_to_api_prompt(workflow: dict, object_info: dict) -> dict:
    """Convert a UI-format workflow (nodes, links, positional widgets_values) into an API prompt.

    Widget values are matched to inputs in the order of the server's /object_info; a linked widget input takes its
    link. Note nodes are dropped. Muted or bypassed nodes, subgraphs and frontend-only helper nodes are refused.
    """
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        node_type, node_id = node["type"], node["id"]
        if node_type in NOTE_NODE_TYPES:
            continue
        if node_type not in object_info:
            raise ValueError(f"node {node_id} has type {node_type!r}, which this server does not know (a missing "
                             f"pack, a subgraph or a frontend-only node); install it or rebuild the workflow")
        if node.get("mode", 0) != 0:
            raise ValueError(f"node {node_id} ({node_type}) is muted or bypassed (mode {node['mode']}); enable it or "
                             f"remove it before converting")
        values = node.get("widgets_values") or []
        if isinstance(values, dict):
            raise ValueError(f"node {node_id} ({node_type}) stores its widgets by name; only positional "
                             f"widgets_values are supported")
        values = list(values)
        inputs: dict[str, Any] = {}
        for name, spec in _widget_inputs(object_info[node_type]):
            if not values:
                raise ValueError(f"node {node_id} ({node_type}) has no widget value for {name!r}; re-save the "
                                 f"workflow with this ComfyUI version")
            inputs[name] = values.pop(0)
            if _takes_control_value(name, spec) and values and values[0] in CONTROL_AFTER_GENERATE_VALUES:
                values.pop(0)
        if values:
            raise ValueError(f"node {node_id} ({node_type}) has {len(values)} widget values more than its "
                             f"definition: {values}")
        for socket_ in node.get("inputs", []):
            if socket_.get("link") is not None:
                _, source_id, source_slot, *_ = links[socket_["link"]]
                inputs[socket_["name"]] = [str(source_id), source_slot]
        prompt[str(node_id)] = {"class_type": node_type, "inputs": inputs}
    return prompt
