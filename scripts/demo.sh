#!/usr/bin/env bash
# Set everything up (the venv, a git-ignored ComfyUI 0.3.75 with this pack linked) and run the demo: forget the
# style "neon" from the bundled MiniCanvas model through ComfyUI's /prompt API; writes to out/demo (or $1).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/setup_comfyui.sh
exec .venv/bin/python scripts/demo.py "$@"
