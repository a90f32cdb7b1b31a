#!/usr/bin/env bash
# Screenshots of the workflows in ComfyUI's frontend (docs/screenshots/, and the SD thumbnails in workflows/).
# Needs Debian's Chromium (installed here with apt if missing) and Playwright in .venv (it drives that Chromium;
# Playwright's own browser download is never used).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if ! command -v chromium >/dev/null; then
    apt-get install -y chromium
fi
.venv/bin/python -c "import playwright" 2>/dev/null || .venv/bin/pip install -q playwright
exec .venv/bin/python scripts/screenshots.py "$@"
