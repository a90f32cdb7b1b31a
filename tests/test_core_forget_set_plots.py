"""Forget sets typed by users, and the preview images."""
import numpy as np
import pytest
import torch

from razor_core import plots
from razor_core.forget_set import from_text
from razor_core.scoring import UnitScore


def test_prompt_lines_become_aligned_forget_and_anchor_prompts():
    fs = from_text(" neon ", "style", "a circle in {concept} style\n\n  a Neon star => a star  \n", "plain",
                   "a circle in brick style\n\na star in dots style\n")
    assert fs.concept == "neon"
    assert fs.forget_prompts == ("a circle in neon style", "a neon star")
    assert fs.anchor_prompts == ("a circle in plain style", "a star")
    assert fs.retain_prompts == ("a circle in brick style", "a star in dots style")


@pytest.mark.parametrize("concept, prompts, anchor, retain, message", [
    ("", "a {concept}", "x", "y", "concept is empty"),
    ("neon", "a circle in brick style", "plain", "y", "mentions neither"),
    ("neon", "a {concept} star", "", "y", "no anchor"),
    ("neon", "", "plain", "y", "no forget prompts"),
    ("neon", "a {concept} star", "plain", "\n \n", "no retain prompts"),
    ("neon", "a {concept} star", "plain", "a neon star", "both forget and retain"),
])
def test_bad_forget_sets_name_the_problem(concept, prompts, anchor, retain, message):
    with pytest.raises(ValueError, match=message):
        from_text(concept, "style", prompts, anchor, retain)


@pytest.mark.parametrize("images, message", [
    (torch.full((1, 3, 8, 8), float("nan")), "NaN"),
    (torch.zeros(0, 3, 8, 8), "image batch is empty: connect at least one image"),
    (torch.zeros(2, 4, 8, 8), "must be RGB.* drop the alpha channel"),
])
def test_bad_images_are_refused(images: torch.Tensor, message: str):
    with pytest.raises(ValueError, match=message):
        from_text("neon", "style", "a {concept} star", "plain", "a star", images)


def test_score_grid_puts_heads_in_columns_and_layers_in_column_zero():
    scores = [UnitScore("t.attn.head0", 1, 0, 0.5), UnitScore("t.attn.head2", 1, 0, 2.0),
              UnitScore("t.mlp.fc1", 1, 0, 0.1)]
    rows, width, grid = plots.score_grid(scores)
    assert rows == ["t.attn", "t.mlp.fc1"] and width == 3
    assert grid[0, 0] == 0.5 and grid[0, 2] == 2.0 and np.isnan(grid[0, 1])
    assert grid[1, 0] == 0.1 and np.isnan(grid[1, 1:]).all()


def test_score_grid_gives_cross_attention_key_value_heads_a_row_of_their_own():
    scores = [UnitScore("b.attn2.kv0", 1, 0, 0.5), UnitScore("b.attn2.kv1", 1, 0, 0.7),
              UnitScore("b.attn1.head1", 1, 0, 0.2), UnitScore("c.attn2.kv", 1, 0, 0.3)]
    rows, width, grid = plots.score_grid(scores)
    assert rows == ["b.attn2.kv", "b.attn1", "c.attn2.kv"] and width == 2
    assert list(grid[0]) == [0.5, 0.7] and grid[1, 1] == 0.2 and grid[2, 0] == 0.3


def test_previews_are_rgb_images():
    heat = plots.score_heatmap([UnitScore("t.attn.head0", 1, 0, 0.5), UnitScore("t.attn.head1", 1, 0, 0.0)],
                               {"t.attn.head0"})
    curve = plots.growth_curve([0.5, 0.9], [0.01, 0.02], 0.9, 0.05)
    for image in (heat, curve):
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3 and image.std() > 0
