"""The pack's entry point imports without ComfyUI, and razor_core never imports ComfyUI."""
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_pack_imports_without_comfyui():
    spec = importlib.util.spec_from_file_location("comfyui_razor", ROOT / "__init__.py",
                                                  submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.__all__ == []
    # ComfyUI reads a pack with NODE_CLASS_MAPPINGS as V1 and then ignores comfy_entrypoint (V3), so never define it
    assert not hasattr(module, "NODE_CLASS_MAPPINGS")


def test_razor_core_never_imports_comfy():
    code = ("import sys, pkgutil, importlib, razor_core\n"
            "for m in pkgutil.walk_packages(razor_core.__path__, 'razor_core.'):\n"
            "    if not m.name.endswith('__main__'): importlib.import_module(m.name)\n"
            "bad = [n for n in sys.modules if n == 'comfy' or n.startswith(('comfy.', 'comfy_'))]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_no_file_is_ever_unpickled():
    """Weights, edits and data load through safetensors/json only: unpickling an untrusted file runs its code."""
    unpickling = re.compile(r"(?<!safetensors\.)\b(torch|pickle|np|numpy|joblib)\.loads?\(")
    sources = [p for folder in ("razor_core", "nodes", "benchmarks", "scripts", "tests")
               for p in (ROOT / folder).rglob("*.py")] + [ROOT / "__init__.py"]
    found = [f"{p.relative_to(ROOT)}: {m.group(0)}" for p in sources for m in unpickling.finditer(p.read_text())]
    assert len(sources) > 40 and not found, found
