"""Using an edit: ApplyRazorEdit (ModelPatcher patches on clones), SaveUnlearnedModel (edit file or checkpoint),
LoadRazorEdit (a saved edit file, validated) and ModelFingerprint."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import comfy.sd
import folder_paths
import torch
from comfy_api.latest import io, ui

from ..razor_core import __version__
from ..razor_core.edit import RazorEdit, create_file, fingerprint
from .common import CATEGORY, RAZOR_EDIT, load, require_finite_inputs

DENOISER_PREFIX = "diffusion_model."


def comfy_lora_key(param: str) -> str:
    """Edit keys as ComfyUI's stock LoRA loaders read full differences: `diffusion_model.…` for the MODEL, and
    `text_encoders.<clip key>` for the CLIP (comfy/lora.py, model_lora_keys_unet/_clip)."""
    return param if param.startswith(DENOISER_PREFIX) else f"text_encoders.{param}"


def _split(edit: RazorEdit) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    model_part = {k: v for k, v in edit.deltas.items() if k.startswith(DENOISER_PREFIX)}
    clip_part = {k: v for k, v in edit.deltas.items() if not k.startswith(DENOISER_PREFIX)}
    return model_part, clip_part


def patched(model: Any, clip: Any | None, edit: RazorEdit, strength: float = 1.0) -> tuple[Any, Any | None]:
    """Clones of MODEL and CLIP carrying the edit as patches; the inputs are never modified. Checks first that the
    edit was made for exactly these weights."""
    require_finite_inputs(strength=strength)
    model_part, clip_part = _split(edit)
    if clip_part and clip is None:
        raise ValueError(f"this edit changes the text encoder ({len(clip_part)} tensors): connect the CLIP too")
    load(model, clip)
    current = {k: v for k, v in model.model.state_dict().items() if k in model_part}
    if clip is not None:
        current.update({k: v for k, v in clip.cond_stage_model.state_dict().items() if k in clip_part})
    edit.check_base(current)
    new_model = model.clone()
    new_model.add_patches({k: (strength * v,) for k, v in model_part.items()})
    new_clip = None
    if clip is not None:
        new_clip = clip.clone()
        new_clip.add_patches({k: (strength * v,) for k, v in clip_part.items()})
    return new_model, new_clip


class RazorApplyEdit(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RazorApplyEdit", display_name="Apply RAZOR Edit", category=CATEGORY,
            description=("Returns copies of MODEL and CLIP with the edit applied as ComfyUI patches; the inputs stay "
                         "untouched, so the original and the unlearned model can be sampled side by side. Refuses "
                         "an edit made for other weights."),
            inputs=[
                io.Model.Input("model", tooltip="The MODEL the edit was computed on."),
                RAZOR_EDIT.Input("edit", tooltip="From Grow Edit Set."),
                io.Float.Input("strength", default=1.0, min=-2.0, max=2.0, step=0.05, tooltip=(
                    "Scale of the edit: 1 applies it as computed, 0 leaves the model as it was.")),
                io.Clip.Input("clip", optional=True, tooltip="The CLIP, needed when the edit changed the text "
                                                             "encoder."),
            ],
            outputs=[io.Model.Output(display_name="MODEL", tooltip="The unlearned MODEL (a patched copy)."),
                     io.Clip.Output(display_name="CLIP", tooltip="The unlearned CLIP (a patched copy; the input "
                                                                 "CLIP if none was connected).")],
        )

    @classmethod
    def execute(cls, model: Any, edit: RazorEdit, strength: float, clip: Any | None = None) -> io.NodeOutput:
        return io.NodeOutput(*patched(model, clip, edit, strength))


def _check_inside_output(filename_prefix: str) -> None:
    """Saves stay inside the output folder (ComfyUI refuses too, later and with a terser message)."""
    if not filename_prefix.strip():
        raise ValueError("filename_prefix is empty: type a name such as 'razor/unlearned'")
    if Path(filename_prefix).is_absolute() or filename_prefix.startswith(("/", "\\")):
        raise ValueError(f"filename_prefix {filename_prefix!r} is an absolute path; files are saved inside "
                         "ComfyUI's output folder only: type a relative name such as 'razor/unlearned'")
    if ".." in Path(filename_prefix.replace("\\", "/")).parts:
        raise ValueError(f"filename_prefix {filename_prefix!r} climbs out with '..'; files are saved inside "
                         "ComfyUI's output folder only: remove the '..'")


class RazorLoadEdit(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RazorLoadEdit", display_name="Load RAZOR Edit", category=CATEGORY,
            description=("Loads an edit file saved by Save Unlearned Model (copied into models/loras) as a "
                         "RAZOR_EDIT, checking it first: a safetensors file with this pack's metadata, units inside "
                         "their tensors, finite values. Apply RAZOR Edit then refuses it unless the model has the "
                         "exact weights it was made for (unlike a plain LoRA loader)."),
            inputs=[
                io.Combo.Input("edit_name", options=sorted(n for n in folder_paths.get_filename_list("loras")
                                                           if n.endswith(".safetensors")),
                               tooltip="An edit file in models/loras."),
            ],
            outputs=[RAZOR_EDIT.Output(display_name="RAZOR_EDIT", tooltip="The edit, for Apply RAZOR Edit."),
                     io.String.Output(display_name="summary", tooltip="Concept, method and edited units.")],
        )

    @classmethod
    def execute(cls, edit_name: str) -> io.NodeOutput:
        edit = RazorEdit.load(folder_paths.get_full_path_or_raise("loras", edit_name))
        summary = (f"{edit.concept}: {edit.settings.get('method', '?')} edit of {len(edit.units)} unit(s): "
                   + ", ".join(u.name for u in edit.units))
        return io.NodeOutput(edit, summary)


class RazorSaveUnlearnedModel(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RazorSaveUnlearnedModel", display_name="Save Unlearned Model", category=CATEGORY,
            description=("Saves into ComfyUI's output folder, never overwriting. 'edit file': the edit as a small "
                         "safetensors of weight differences with its metadata (concept, units, scores, settings, "
                         "base fingerprint); the stock LoraLoader / LoraLoaderModelOnly apply it exactly (copy it "
                         "to models/loras). 'full checkpoint': MODEL, CLIP and VAE with the edit baked in, for "
                         "Load Checkpoint."),
            inputs=[
                RAZOR_EDIT.Input("edit", tooltip="From Grow Edit Set."),
                io.Combo.Input("format", options=["edit file", "full checkpoint"], default="edit file", tooltip=(
                    "edit file: small, re-applied with a LoRA loader. full checkpoint: needs MODEL, CLIP and VAE.")),
                io.String.Input("filename_prefix", default="razor/unlearned", tooltip=(
                    "Path under the output folder; a counter is appended (ComfyUI's naming).")),
                io.Model.Input("model", optional=True, tooltip="Full checkpoint only: the MODEL the edit was "
                                                               "computed on."),
                io.Clip.Input("clip", optional=True, tooltip="Full checkpoint only: its CLIP."),
                io.Vae.Input("vae", optional=True, tooltip="Full checkpoint only: its VAE."),
            ],
            outputs=[io.String.Output(display_name="path", tooltip="Where the file was written.")],
            hidden=[io.Hidden.prompt, io.Hidden.extra_pnginfo],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, edit: RazorEdit, format: str, filename_prefix: str, model: Any | None = None,
                clip: Any | None = None, vae: Any | None = None) -> io.NodeOutput:
        _check_inside_output(filename_prefix)
        try:
            folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(
                filename_prefix, folder_paths.get_output_directory())
        except OSError as exc:  # e.g. a file where the prefix names a folder
            raise ValueError(f"cannot save under {filename_prefix!r}: {exc.strerror or exc} "
                             f"({exc.filename}); choose another filename_prefix") from exc
        path = Path(folder) / f"{filename}_{counter:05}_.safetensors"
        if format == "edit file":
            edit.save(path, key_map=comfy_lora_key)
        else:
            if model is None or clip is None or vae is None:
                raise ValueError("a full checkpoint needs MODEL, CLIP and VAE: connect all three (or save the "
                                 "'edit file')")
            new_model, new_clip = patched(model, clip, edit)
            metadata = {"razor.concept": edit.concept, "razor.pack_version": __version__,
                        "razor.fingerprint": edit.base_fingerprint}
            create_file(path, lambda tmp: comfy.sd.save_checkpoint(tmp, new_model, new_clip, vae,
                                                                    metadata=metadata))
        relative = str(Path(subfolder) / path.name) if subfolder else path.name
        return io.NodeOutput(relative, ui=ui.PreviewText(f"saved {relative} in the output folder"))


def _clip_weights(model: Any, clip: Any) -> dict[str, torch.Tensor]:
    """The CLIP's weights as a checkpoint of this model holds them (the model's own save rules), without the CLIP-L
    text_projection wherever nothing uses it. Checkpoints often lack that weight (ComfyUI's loader expects so), and
    ComfyUI then leaves it uninitialised, different memory on every load: SD1.5's save rules drop it, and SD3's
    CLIP-L never projects its pooled output. So two loads of one file get one fingerprint."""
    weights = clip.cond_stage_model.state_dict()
    config = getattr(model.model, "model_config", None)
    if config is not None:
        try:
            weights = config.process_clip_state_dict_for_saving(dict(weights))
        except KeyError:  # a CLIP of another family than the MODEL: its weights as they are
            pass
    unprojected = [name for name, tower in clip.cond_stage_model.named_children()
                   if getattr(tower, "return_projected_pooled", True) is False]
    return {k: v for k, v in weights.items()
            if not any(f"{name}." in k and k.endswith("text_projection.weight") for name in unprojected)}


class RazorFingerprint(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RazorFingerprint", display_name="Model Fingerprint", category=CATEGORY,
            description=("sha256 over every weight of a MODEL (and CLIP, VAE) as ComfyUI loads it, patches included "
                         "(the CLIP as a checkpoint would store it): proof that an original model is unchanged after "
                         "unlearning, or that two models are the same."),
            inputs=[
                io.Model.Input("model", tooltip="The MODEL to fingerprint."),
                io.Clip.Input("clip", optional=True, tooltip="Its CLIP, fingerprinted together with it."),
                io.Vae.Input("vae", optional=True, tooltip="Its VAE, fingerprinted together with it."),
                io.String.Input("label", default="", tooltip="Free text shown with the fingerprint (a different "
                                                             "label also makes ComfyUI recompute it)."),
            ],
            outputs=[io.String.Output(display_name="fingerprint", tooltip="The sha256 as hex text.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model: Any, label: str, clip: Any | None = None, vae: Any | None = None) -> io.NodeOutput:
        load(model, clip)
        weights = {f"model.{k}": v for k, v in model.model.state_dict().items()}
        if clip is not None:
            weights.update({f"clip.{k}": v for k, v in _clip_weights(model, clip).items()})
        if vae is not None:
            weights.update({f"vae.{k}": v for k, v in vae.first_stage_model.state_dict().items()})
        digest = fingerprint(weights)
        return io.NodeOutput(digest, ui=ui.PreviewText(digest))


NODES = [RazorApplyEdit, RazorSaveUnlearnedModel, RazorLoadEdit, RazorFingerprint]
