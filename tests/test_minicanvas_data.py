"""The MiniCanvas generator: deterministic, a full grid, distinct splits, real textures inside."""
import numpy as np
import pytest

from razor_core.minicanvas import data, text


def test_grid_is_at_least_8_by_8_with_distinct_names():
    assert len(set(data.STYLES)) == len(data.STYLES) >= 8
    assert len(set(data.OBJECTS)) == len(data.OBJECTS) >= 8
    assert not set(data.STYLES) & set(data.OBJECTS)


def test_render_is_a_pure_function_of_its_arguments():
    a = data.render(3, 5, 7, "train")
    b = data.render(3, 5, 7, "train")
    assert a.dtype == np.uint8 and a.shape == (32, 32, 3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, data.render(3, 5, 8, "train"))


def test_splits_do_not_share_images():
    train, s_tr, o_tr = data.build_split("train", 3)
    held, s_he, o_he = data.build_split("heldout", 3)
    np.testing.assert_array_equal(s_tr, s_he)
    np.testing.assert_array_equal(o_tr, o_he)
    train_bytes = {img.tobytes() for img in train}
    assert not any(img.tobytes() in train_bytes for img in held)


def test_build_split_labels_cover_every_cell_equally():
    _, styles, objects = data.build_split("heldout", 2)
    cells = np.bincount(styles * len(data.OBJECTS) + objects, minlength=len(data.STYLES) * len(data.OBJECTS))
    assert (cells == 2).all()


def test_unknown_split_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown split"):
        data.render(0, 0, 0, "test")


def test_real_textures_come_from_scikit_image():
    brick = data._real_texture("brick")
    assert brick.shape[0] >= 256 and brick.std() > 0.05  # a photographed texture, not a flat fill


def test_styles_and_objects_differ_visibly():
    # Mean colour separates styles; the silhouette separates objects within one style.
    means = np.array([[data.render(s, o, 0).mean(axis=(0, 1)) for o in range(8)] for s in range(8)])
    style_means = means.mean(axis=1)
    dists = np.linalg.norm(style_means[:, None] - style_means[None], axis=-1)
    assert dists[~np.eye(8, dtype=bool)].min() > 10
    circle, square = data._object_mask("circle", np.random.default_rng(0)), data._object_mask("square", np.random.default_rng(0))
    assert np.abs(circle - square).sum() > 20


def test_captions_use_both_names_and_paraphrases_are_unseen():
    assert data.caption("neon", "star") == "a star in neon style"
    for template in data.TRAIN_TEMPLATES + data.PARAPHRASE_TEMPLATES:
        filled = template.format(style="neon", object="star")
        assert "neon" in filled and "star" in filled
    assert not set(data.TRAIN_TEMPLATES) & set(data.PARAPHRASE_TEMPLATES)
    assert len(data.PARAPHRASE_TEMPLATES) >= 10


def test_tokenizer_corpus_covers_every_concept():
    corpus = " ".join(text.tokenizer_corpus())
    for name in data.STYLES + data.OBJECTS:
        assert name in corpus


@pytest.mark.parametrize("domain", ["style", "object"])
def test_forget_sets_never_see_the_evaluation_phrasing_and_retain_many(domain):
    from razor_core.minicanvas.unlearn import forget_set_for

    names = data.STYLES if domain == "style" else data.OBJECTS
    forget_set = forget_set_for(domain, 2)
    evaluation = {data.EVAL_TEMPLATE.format(style=s, object=o) for s in data.STYLES for o in data.OBJECTS}
    prompts = forget_set.forget_prompts + forget_set.retain_prompts
    assert not evaluation & set(prompts)
    assert all(names[2] in p for p in forget_set.forget_prompts)
    assert not any(names[2] in p.split() or f"{names[2]}," in p for p in forget_set.retain_prompts)
    # Retain prompts use every non-evaluation phrasing, so protection does not hinge on one word order.
    phrasings = {t for t in data.TRAIN_TEMPLATES[1:] for s in data.STYLES for o in data.OBJECTS
                 if t.format(style=s, object=o) in forget_set.retain_prompts}
    assert phrasings == set(data.TRAIN_TEMPLATES[1:])
