"""The closed-form key/value map: the least-squares solution, its row separability, and the token alignment."""
import torch

from razor_core.kv_map import (KeyValueMap, TextVectors, closed_form, concept_start, end_position, guide_positions,
                               natural_scale, reproducing_rows, text_vectors)
from razor_core.units import EditUnit, Slice


def _problem(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(6, 4, generator=gen)
    return w, torch.randn(5, 4, generator=gen), torch.randn(5, 4, generator=gen), torch.randn(9, 4, generator=gen)


def test_closed_form_is_the_regularised_least_squares_solution():
    w, c, g, p = _problem()
    lam, gamma = 2.0, 0.5
    solved = closed_form(w, c, g, p, lam, gamma)
    # The same problem stacked as one least-squares system: rows [c; √λ p; √γ I] must map to [W g; √λ W p; √γ W].
    a = torch.cat([c, lam ** 0.5 * p, gamma ** 0.5 * torch.eye(4)]).double()
    b = torch.cat([g @ w.T, lam ** 0.5 * p @ w.T, gamma ** 0.5 * w.T]).double()
    expected = torch.linalg.lstsq(a, b).solution.T
    assert torch.allclose(solved.double(), expected, atol=1e-5)
    # Pinned retain vectors keep their outputs better than the concept's move: the map is what the edit is for.
    assert (solved @ p.T - w @ p.T).norm() < (solved @ c.T - w @ c.T).norm()


def test_a_head_direction_is_its_rows_of_the_layer_solution_and_eta_one_reaches_it():
    w, c, g, p = _problem(1)
    bias = torch.randn(6)
    theta0 = {"attn2.to_k.weight": w, "attn2.to_k.bias": bias}
    kv = KeyValueMap(TextVectors(c, g, p), theta0)
    head = EditUnit("attn2.kv1", "kv_head", (Slice("attn2.to_k.weight", 0, 3, 3), Slice("attn2.to_k.bias", 0, 3, 3)))
    d = kv.direction(head, theta0)
    full = closed_form(w, c, g, p)
    assert torch.allclose(d[:12].view(3, 4), (full - w)[3:6])
    assert torch.all(d[12:] == 0)  # biases stay
    moved = w.clone()
    moved[3:6] += d[:12].view(3, 4)
    assert torch.allclose(moved[3:6], full[3:6]) and torch.equal(moved[:3], w[:3])
    scale = natural_scale([head], {head.name: d}, theta0)
    theta_norm = torch.cat([w[3:6].reshape(-1), bias[3:6]]).norm()
    assert abs(scale * float(theta_norm) / float(d.norm()) - 1.0) < 1e-6  # the search's η at that scale is 1


def test_alignment_maps_the_concept_and_what_follows_onto_the_anchor_end():
    start_id, end_id = 1, 2
    #          pos: 0        1  2   3   4   5       6       7
    prompt = [start_id, 10, 11, 12, 13, end_id, end_id, end_id]
    words = [False, True, True, True, True, False, False, False]
    assert concept_start(prompt, words, [11, 12]) == 2
    assert concept_start(prompt, words, [99]) is None
    assert end_position(words) == 5
    anchor_words = [False, True, False, False, False, False, False, False]
    # concept 2..4 and the end token -> the anchor's end (2); padding k after the end -> the anchor's end + k
    assert guide_positions(2, 5, end_position(anchor_words), 8) == [2, 2, 2, 2, 3, 4]


def test_text_vectors_take_only_prompts_that_name_the_concept():
    vocab = {"a": 10, "neon": 11, "star": 12, "b": 13}

    def tokens(text):
        ids = [1] + [vocab[w] for w in text.split()] + [2]
        ids += [2] * (6 - len(ids))
        return ids, [0 < j < len(text.split()) + 1 for j in range(6)]
    forget = torch.arange(2 * 6 * 3, dtype=torch.float32).view(2, 6, 3)
    anchor, retain = -forget, torch.ones(1, 6, 3)
    v = text_vectors(forget, anchor, retain, ["a neon star", "a b star"], ["a star", "a star"], "neon", tokens)
    assert torch.equal(v.concept, forget[0, 2:])          # from "neon" on; the second prompt lacks the concept
    assert torch.equal(v.guide, anchor[0, [3, 3, 3, 4]])  # neon, star, end -> the anchor's end (3); pad -> 4
    assert v.retain.shape == (6, 3)


def test_the_closed_form_adversary_undoes_an_invertible_key_value_edit():
    gen = torch.Generator().manual_seed(3)
    originals = [torch.randn(6, 4, generator=gen) for _ in range(3)]  # three layers' key/value projections
    rows = torch.randn(5, 4, generator=gen)
    # An edit that mixes the inputs invertibly (what a ridge-regularised map is, near W⁰) in every layer at once:
    mix = torch.eye(4) + 0.5 * torch.randn(4, 4, generator=gen)
    edited = [w @ mix for w in originals]
    attacked = reproducing_rows(rows, edited, originals, ridge=1e-9)
    torch.testing.assert_close(attacked, rows @ torch.linalg.inv(mix).T, atol=1e-4, rtol=1e-4)
    # An edit that differs per layer cannot be undone exactly, and the adversary is the least-squares optimum.
    edited = [w + 0.5 * torch.randn(6, 4, generator=gen) for w in originals]
    attacked = reproducing_rows(rows, edited, originals, ridge=1e-9)

    def mismatch(c):
        return sum(float((c @ w.T - rows @ w0.T).pow(2).sum()) for w, w0 in zip(edited, originals))
    assert mismatch(attacked) < mismatch(rows)
    for _ in range(5):
        assert mismatch(attacked) <= mismatch(attacked + 1e-3 * torch.randn(5, 4, generator=gen)) + 1e-9
    # The ridge pulls the adversary's vectors towards zero: with an untouched model they stay the rows, shrunk.
    same = reproducing_rows(rows, originals, originals, ridge=0.01)
    assert same.norm() < rows.norm() and torch.allclose(same, rows, atol=0.1)
