"""The committed MiniCanvas weights: manifest, sha256 verification, clear errors, and models that know the grid."""
import shutil

import pytest
import torch

from razor_core.minicanvas import data, evaluate, pipeline, store, text
from razor_core.minicanvas.classifier import to_model_input

MODEL_FILES = ("clip.safetensors", "text_encoder.safetensors", "denoiser.safetensors",
               "style_classifier.safetensors", "object_classifier.safetensors")


def test_manifest_lists_every_model_with_provenance_within_budget():
    manifest = store.read_manifest()
    for name in MODEL_FILES + ("tokenizer/vocab.json", "tokenizer/merges.txt"):
        entry = manifest["files"][name]
        assert len(entry["sha256"]) == 64 and entry["bytes"] > 0
        assert entry["command"].startswith("python -m razor_core.minicanvas.train")
        assert "machine" in entry and "train_seconds" in entry
    assert sum(e["bytes"] for e in manifest["files"].values()) <= 60 * 1024 * 1024


def test_every_file_matches_its_hash():
    for name in store.read_manifest()["files"]:
        store.verified_path(name)


@pytest.fixture
def weights_copy(tmp_path):
    dst = tmp_path / "weights"
    shutil.copytree(store.WEIGHTS_DIR, dst)
    return dst


def test_missing_file_names_the_file_and_the_fix(weights_copy):
    (weights_copy / "denoiser.safetensors").unlink()
    with pytest.raises(store.WeightsError, match=r"denoiser\.safetensors is missing.*git checkout"):
        pipeline.load_pipeline(weights_copy)


def test_corrupt_file_is_refused_before_loading(weights_copy):
    path = weights_copy / "style_classifier.safetensors"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(store.WeightsError, match="corrupt"):
        pipeline.load_classifier("style", weights_copy)


def test_truncated_file_is_refused(weights_copy):
    path = weights_copy / "clip.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(store.WeightsError, match="corrupt"):
        pipeline.load_clip(weights_copy)


def test_missing_manifest_is_a_clear_error(weights_copy):
    (weights_copy / store.MANIFEST).unlink()
    with pytest.raises(store.WeightsError, match="manifest"):
        pipeline.load_classifier("object", weights_copy)


def test_tokenizer_is_a_real_clip_bpe():
    tok = text.load_tokenizer(pipeline.tokenizer_dir())
    ids = tok("a star in neon style").input_ids
    assert tok.convert_ids_to_tokens(ids) == ["<|startoftext|>", "a</w>", "star</w>", "in</w>", "neon</w>",
                                              "style</w>", "<|endoftext|>"]
    unseen = tok("zebra on the moon!").input_ids
    assert tok.unk_token_id not in unseen[1:-1]  # unseen words split into sub-words, never unknown


@pytest.fixture(scope="module")
def heldout():
    images, styles, objects = data.build_split("heldout", 4)
    return to_model_input(torch.from_numpy(images)), styles, objects


def test_classifiers_judge_heldout_real_images(heldout):
    images, styles, objects = heldout
    assert (evaluate.classify(pipeline.load_classifier("style"), images) == styles).mean() >= 0.97
    assert (evaluate.classify(pipeline.load_classifier("object"), images) == objects).mean() >= 0.97


def test_clip_zero_shot_knows_both_domains(heldout):
    images, styles, objects = heldout
    model, tok = pipeline.load_clip()
    assert (evaluate.clip_zero_shot(model, tok, images, styles, "style") == styles).mean() >= 0.9
    assert (evaluate.clip_zero_shot(model, tok, images, objects, "object") == objects).mean() >= 0.9


def test_diffusion_model_draws_the_concepts_it_is_asked_for():
    pipe = pipeline.load_pipeline()
    answers = evaluate.answer_set(pipe.sample, pipeline.load_classifier("style"),
                                  pipeline.load_classifier("object"), seeds=(7,))
    report = evaluate.accuracy_report(answers)
    assert report["gen_style_acc"] >= 0.85 and report["gen_object_acc"] >= 0.85, report


def test_sampling_is_deterministic_per_seed():
    pipe = pipeline.load_pipeline()
    a = pipe.sample(["a star in neon style", "a ring in brick style"], [1, 2], steps=4)
    b = pipe.sample(["a ring in brick style"], [2], steps=4)
    torch.testing.assert_close(a[1:], b, rtol=0, atol=1e-5)
    assert not torch.equal(a[0], a[1])
