#!/usr/bin/env bash
# Set everything up and run the main job. Today: evaluate the bundled MiniCanvas testbed and sample its grid.
# (The ComfyUI unlearning demo replaces this once the node pack lands.)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
out=${1:-out/demo}
mkdir -p "$out"
.venv/bin/python -m razor_core.minicanvas grid --out "$out/minicanvas_grid.png"
.venv/bin/python -m razor_core.minicanvas check --json "$out/minicanvas_check.json"
echo "wrote $out/minicanvas_grid.png and $out/minicanvas_check.json"
