"""Load the bundled MiniCanvas demo model as ordinary ComfyUI MODEL, CLIP and VAE objects.

The weights are razor_core's committed MiniCanvas files (sha256-checked on every load). ComfyUI's own machinery runs
them, so the stock CLIPTextEncode -> KSampler -> VAEDecode chain samples what razor_core's MiniCanvasPipeline samples:
- MODEL: `comfy.model_base.BaseModel` of type FLOW (rectified flow, CONST parameterisation) around MiniDiT built with
  `comfy.ops`, `ModelSamplingDiscreteFlow` with shift 1 and multiplier 1000 (the network sees t * 1000), and the
  3-channel identity latent format of ChromaRadiance: the latent *is* the 32x32 image in [-1, 1].
- CLIP: `comfy.sd.CLIP` with ComfyUI's SD1 tokenizer and text encoder classes reading our tokenizer files and config
  (context length 24); per-token features are the last layer after the final layer norm, as the pipeline's.
- VAE: ComfyUI's pixel-space VAE (what the stock VAELoader's "pixel_space" option builds).
Everything runs in float32: the model is tiny, and ComfyUI's samples then match razor_core's to float precision.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import comfy.clip_model
import comfy.latent_formats
import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.sd
import comfy.sd1_clip
import comfy.supported_models_base
import folder_paths
import torch
from comfy_api.latest import io

from ..razor_core.minicanvas import data, pipeline, store, text
from ..razor_core.minicanvas.denoiser import MiniDiT

CATEGORY = "unlearning/razor"
DENOISER_FILE = "denoiser.safetensors"
TEXT_ENCODER_FILE = "text_encoder.safetensors"


class ComfyMiniDiT(MiniDiT):
    """MiniDiT as ComfyUI's BaseModel builds and calls it: `BaseModel.get_dtype()` reads `diffusion_model.dtype`,
    and a latent of the wrong size gets an error that says which size to use."""

    def __init__(self, dtype: torch.dtype | None = None, image_size: int = 32, **config: Any):
        super().__init__(dtype=dtype, image_size=image_size, **config)
        self.dtype = dtype or torch.float32
        self.image_size = image_size

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(f"MiniCanvas draws {self.image_size}x{self.image_size} images only, but the latent is "
                             f"{x.shape[-1]}x{x.shape[-2]}; set the EmptyChromaRadianceLatentImage to "
                             f"{self.image_size}x{self.image_size}")
        return super().forward(x, timesteps, context, **kwargs)


class MiniCanvasModelConfig(comfy.supported_models_base.BASE):
    """A `supported_models`-style config for MiniDiT (never registered for checkpoint auto-detection)."""

    unet_extra_config: dict = {}  # BASE adds UNet head settings here; MiniDiT takes its config as it is
    sampling_settings = {"shift": 1.0, "multiplier": 1000}
    latent_format = comfy.latent_formats.ChromaRadiance  # 3 channels, identity: pixel space
    supported_inference_dtypes = [torch.float32]
    memory_usage_factor = 0.05  # activations of a 2.3 M-parameter model on 32x32 images are a few MB

    def get_model(self, state_dict: dict, prefix: str = "", device: torch.device | None = None
                  ) -> comfy.model_base.BaseModel:
        return comfy.model_base.BaseModel(self, model_type=comfy.model_base.ModelType.FLOW, device=device,
                                          unet_model=ComfyMiniDiT)


class MiniCanvasCLIPTextModel(comfy.clip_model.CLIPTextModel):
    """ComfyUI's CLIP text model with the config's vocabulary size (ComfyUI builds CLIP-L's 49408 tokens)."""

    def __init__(self, config_dict: dict, dtype: torch.dtype, device: torch.device, operations: Any):
        super().__init__(config_dict, dtype, device, operations)
        self.set_input_embeddings(operations.Embedding(config_dict["vocab_size"], config_dict["hidden_size"],
                                                       dtype=dtype, device=device))


def _text_encoder_config() -> dict:
    """The text encoder's config, built exactly as razor_core's pipeline builds it."""
    return text.text_config(text.load_tokenizer(pipeline.tokenizer_dir()))


class MiniCanvasTextEncoder(comfy.sd1_clip.SDClipModel):
    def __init__(self, device: str = "cpu", dtype: torch.dtype | None = None, model_options: dict = {}):
        config = _text_encoder_config()
        super().__init__(
            device=device, dtype=dtype, model_options=model_options, max_length=text.CONTEXT_LENGTH,
            textmodel_json_config=config, model_class=MiniCanvasCLIPTextModel, layer="last",
            special_tokens={"start": config["bos_token_id"], "end": config["eos_token_id"],
                            "pad": config["pad_token_id"]},
            return_projected_pooled=False)


class MiniCanvasClipModel(comfy.sd1_clip.SD1ClipModel):
    """One text encoder under SD1's name `clip_l`, so patch keys look like SD1.5's (`clip_l.transformer....`)."""

    def __init__(self, device: str = "cpu", dtype: torch.dtype | None = None, model_options: dict = {}):
        super().__init__(device=device, dtype=dtype, model_options=model_options, clip_model=MiniCanvasTextEncoder)


class MiniCanvasWordTokenizer(comfy.sd1_clip.SDTokenizer):
    def __init__(self, embedding_directory: Any = None, tokenizer_data: dict = {}):
        super().__init__(tokenizer_path=str(pipeline.tokenizer_dir()), max_length=text.CONTEXT_LENGTH,
                         pad_with_end=True, embedding_directory=embedding_directory,
                         embedding_size=_text_encoder_config()["hidden_size"], embedding_key="clip_l",
                         tokenizer_data=tokenizer_data)


class MiniCanvasTokenizer(comfy.sd1_clip.SD1Tokenizer):
    def __init__(self, embedding_directory: Any = None, tokenizer_data: dict = {}):
        super().__init__(embedding_directory=embedding_directory, tokenizer_data=tokenizer_data,
                         tokenizer=MiniCanvasWordTokenizer)


def load_model(weights_dir: Path = store.WEIGHTS_DIR) -> comfy.model_patcher.ModelPatcher:
    """The MiniDiT denoiser as a ComfyUI MODEL."""
    config = MiniCanvasModelConfig(store.file_config(DENOISER_FILE, weights_dir))
    config.set_inference_dtype(torch.float32, None)
    offload_device = comfy.model_management.unet_offload_device()
    model = config.get_model({}, device=offload_device)
    # strict: comfy.ops leaves weights uninitialised, so a key that did not load must be an error, not a warning
    model.diffusion_model.load_state_dict(store.load_tensors(DENOISER_FILE, weights_dir), strict=True)
    return comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=offload_device)


def load_clip(weights_dir: Path = store.WEIGHTS_DIR) -> comfy.sd.CLIP:
    """The MiniCanvas text encoder and tokenizer as a ComfyUI CLIP."""
    target = comfy.supported_models_base.ClipTarget(MiniCanvasTokenizer, MiniCanvasClipModel)
    clip = comfy.sd.CLIP(target, embedding_directory=folder_paths.get_folder_paths("embeddings"),
                         model_options={"dtype": torch.float32})
    tensors = {f"text_model.{k}": v for k, v in store.load_tensors(TEXT_ENCODER_FILE, weights_dir).items()}
    # The denoiser's text encoder has no projection, but ComfyUI's CLIP model does (it only feeds the projected
    # pooled output, which nothing here reads): identity keeps it defined instead of uninitialised memory.
    width = _text_encoder_config()["hidden_size"]
    tensors["text_projection.weight"] = torch.eye(width)
    result = clip.load_sd(tensors)
    if result.missing_keys or result.unexpected_keys:
        raise store.WeightsError(f"{weights_dir / TEXT_ENCODER_FILE} does not fit ComfyUI's CLIP text model "
                                 f"(missing {result.missing_keys}, unexpected {result.unexpected_keys}); "
                                 f"{store.RESTORE_HINT}")
    return clip


def load_vae() -> comfy.sd.VAE:
    """ComfyUI's pixel-space VAE: IMAGE in [0, 1] <-> LATENT in [-1, 1], same size, built as VAELoader does."""
    vae = comfy.sd.VAE(sd={"pixel_space_vae": torch.tensor(1.0)})
    vae.throw_exception_if_invalid()
    return vae


class RazorLoadMiniCanvas(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RazorLoadMiniCanvas",
            display_name="Load MiniCanvas demo model",
            category=CATEGORY,
            description=(
                "Loads MiniCanvas, the small text-to-image model bundled with this pack (8 styles x 8 objects, "
                "32x32 pixels), as ordinary MODEL, CLIP and VAE. Sample it with the stock nodes: CLIPTextEncode "
                "(e.g. 'a star in neon style') -> KSampler (euler, simple, 20 steps, cfg 4) on an "
                "EmptyChromaRadianceLatentImage of 32x32 -> VAEDecode. Use it to try unlearning in seconds on CPU; "
                "the bundled classifiers measure what was forgotten."),
            inputs=[],
            outputs=[
                io.Model.Output(display_name="MODEL", tooltip=(
                    "MiniDiT, a 2.3 M-parameter pixel-space diffusion transformer (rectified flow). Its latent is "
                    "the 3x32x32 image itself: use an EmptyChromaRadianceLatentImage of 32x32.")),
                io.Clip.Output(display_name="CLIP", tooltip=(
                    f"The MiniCanvas CLIP text encoder and tokenizer ({text.CONTEXT_LENGTH} tokens). Prompts name a "
                    f"style ({', '.join(data.STYLES)}) and an object ({', '.join(data.OBJECTS)}).")),
                io.Vae.Output(display_name="VAE", tooltip=(
                    "Pixel-space VAE: decoding only rescales the latent from [-1, 1] to an IMAGE in [0, 1].")),
            ],
        )

    @classmethod
    def execute(cls) -> io.NodeOutput:
        return io.NodeOutput(load_model(), load_clip(), load_vae())
