"""comfyui-razor: the ComfyUI entry point of the pack.

ComfyUI imports this file from custom_nodes/. It must also import cleanly without ComfyUI (tests, tools), so the node
classes are only loaded when ComfyUI's `comfy_api` is importable.
"""
try:
    import comfy_api  # noqa: F401  (present only inside ComfyUI)
except ImportError:
    NODE_CLASS_MAPPINGS: dict = {}
    NODE_DISPLAY_NAME_MAPPINGS: dict = {}
else:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
