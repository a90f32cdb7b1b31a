"""RAZOR unlearning, pure torch (never imports ComfyUI)."""
__version__ = "0.1.0"  # the pack's version, as in pyproject.toml; written into every edit file
