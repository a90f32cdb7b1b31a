"""MiniCanvas text side: a real byte-level BPE tokenizer in CLIP's file format, and CLIP model configs.

The tokenizer is trained with the `tokenizers` library on the MiniCanvas captions and saved as `vocab.json` +
`merges.txt`, the files `transformers.CLIPTokenizer` (and ComfyUI's SD tokenizer) read. Text and vision towers are
`transformers` CLIP modules, so their state-dict keys match ComfyUI's `comfy.clip_model` as well.
"""
from __future__ import annotations

import json
import string
from pathlib import Path

from . import data

CONTEXT_LENGTH = 24  # tokens per prompt, including start and end tokens
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# CLIP's pre-tokenisation pattern (words, numbers, contractions, other symbols).
_CLIP_PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""

# Single-domain prompts: CLIP is trained on them too, and zero-shot classification uses the first of each.
STYLE_ONLY_TEMPLATES = ("an image in {style} style", "{style} style", "something in the {style} style")
OBJECT_ONLY_TEMPLATES = ("an image of a {object}", "a {object}", "a photo of a {object}")


def tokenizer_corpus() -> list[str]:
    lines = []
    for style in data.STYLES:
        lines += [t.format(style=style) for t in STYLE_ONLY_TEMPLATES]
        for obj in data.OBJECTS:
            lines += [t.format(style=style, object=obj) for t in data.TRAIN_TEMPLATES + data.PARAPHRASE_TEMPLATES]
    for obj in data.OBJECTS:
        lines += [t.format(object=obj) for t in OBJECT_ONLY_TEMPLATES]
    # Every printable ASCII symbol as a word of its own, so any user prompt tokenizes without unknown tokens.
    lines.append(" ".join(c for c in string.printable if not c.isspace()))
    return lines


def train_tokenizer(out_dir: Path, vocab_size: int = 1024) -> None:
    """Train a byte-level BPE (CLIP layout: `</w>` word ends, lower-case) and write CLIPTokenizer's files."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=EOS, end_of_word_suffix="</w>", continuing_subword_prefix=""))
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_CLIP_PATTERN), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[BOS, EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        end_of_word_suffix="</w>", show_progress=False)
    tok.train_from_iterator(tokenizer_corpus(), trainer)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.model.save(str(out_dir))
    (out_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": CONTEXT_LENGTH, "bos_token": BOS,
        "eos_token": EOS, "unk_token": EOS, "pad_token": EOS, "do_lower_case": True}, indent=1))
    (out_dir / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}, indent=1))


def load_tokenizer(tokenizer_dir: Path):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(tokenizer_dir), model_max_length=CONTEXT_LENGTH)


def text_config(tokenizer) -> dict:
    return {
        "vocab_size": len(tokenizer), "hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 4,
        "num_attention_heads": 4, "max_position_embeddings": CONTEXT_LENGTH, "hidden_act": "quick_gelu",
        "projection_dim": 128, "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


VISION_CONFIG = {
    "image_size": data.IMAGE_SIZE, "patch_size": 4, "num_channels": 3, "hidden_size": 128, "intermediate_size": 512,
    "num_hidden_layers": 4, "num_attention_heads": 4, "hidden_act": "quick_gelu", "projection_dim": 128,
}


def build_clip(tokenizer):
    from transformers import CLIPConfig, CLIPModel

    cfg = CLIPConfig(text_config=text_config(tokenizer), vision_config=VISION_CONFIG, projection_dim=128)
    return CLIPModel(cfg)


def build_text_encoder(tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(**text_config(tokenizer)))


def tokenize(tokenizer, prompts: list[str]):
    """Fixed-length ids (padded with the end token, as SD's CLIP does)."""
    return tokenizer(prompts, padding="max_length", max_length=CONTEXT_LENGTH, truncation=True,
                     return_tensors="pt").input_ids

