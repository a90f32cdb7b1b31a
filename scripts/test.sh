#!/usr/bin/env bash
# Set everything up (the venv, then a real ComfyUI for the server tests) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/setup_comfyui.sh
exec .venv/bin/python -m pytest "$@"
