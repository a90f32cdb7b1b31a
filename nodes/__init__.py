"""ComfyUI nodes of the pack (thin: parse inputs, call razor_core, format outputs).

The node classes arrive with the node-pack milestone; until then the pack registers no nodes.
"""
NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
