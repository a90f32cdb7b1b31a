"""UA / IRA / CRA on hand-made answer sets whose values are known."""
import numpy as np
import pytest
import torch

from razor_core.minicanvas import data, evaluate


def _answers(pred_styles, pred_objects, styles, objects):
    n = len(styles)
    return evaluate.AnswerSet(torch.zeros(n, 3, 32, 32), np.array(styles), np.array(objects),
                              np.array(pred_styles), np.array(pred_objects))


def test_perfect_forgetting_and_retention():
    # Style 0 is forgotten (classified as 1), every other label is right.
    styles = [0, 0, 1, 1, 2, 2]
    objects = [0, 1, 0, 1, 0, 1]
    ans = _answers([1, 1, 1, 1, 2, 2], objects, styles, objects)
    assert evaluate.unlearning_metrics(ans, "style", 0) == {"ua": 100.0, "ira": 100.0, "cra": 100.0}


def test_partial_values_are_the_documented_percentages():
    styles = [0, 0, 0, 0, 1, 1, 2, 2]
    objects = [0, 1, 0, 1, 0, 1, 0, 1]
    pred_styles = [0, 2, 1, 0, 1, 0, 2, 2]   # target images: 2 of 4 not labelled 0 -> UA 50; others: 3 of 4 right
    pred_objects = [1, 1, 1, 1, 0, 0, 0, 1]  # non-target images: 3 of 4 objects right -> CRA 75
    ans = _answers(pred_styles, pred_objects, styles, objects)
    assert evaluate.unlearning_metrics(ans, "style", 0) == {"ua": 50.0, "ira": 75.0, "cra": 75.0}


def test_object_target_swaps_the_domains():
    styles = [0, 1, 0, 1]
    objects = [2, 2, 3, 3]
    ans = _answers([0, 0, 0, 1], [2, 3, 3, 3], styles, objects)
    # Target object 2: one of its two images still labelled 2 -> UA 50; object 3 images both right -> IRA 100;
    # styles of the non-target (object 3) images: [0, 1] predicted [0, 1] -> CRA 100.
    assert evaluate.unlearning_metrics(ans, "object", 2) == {"ua": 50.0, "ira": 100.0, "cra": 100.0}


def test_unknown_domain_is_rejected():
    ans = _answers([0], [0], [0], [0])
    with pytest.raises(ValueError, match="domain must be one of"):
        evaluate.unlearning_metrics(ans, "colour", 0)


def test_grid_prompts_cover_the_grid_once_per_seed_with_distinct_noise():
    prompts, seeds, styles, objects = evaluate.grid_prompts((1, 2))
    assert len(prompts) == len(data.STYLES) * len(data.OBJECTS) * 2
    assert len(set(seeds)) == len(seeds)
    assert prompts[0] == data.caption(data.STYLES[styles[0]], data.OBJECTS[objects[0]])


def test_accuracy_report_per_concept():
    styles = [0, 0, 1, 1]
    objects = [0, 1, 0, 1]
    ans = _answers([0, 0, 1, 0], [0, 1, 1, 1], styles, objects)
    report = evaluate.accuracy_report(ans)
    assert report["gen_style_acc"] == 0.75 and report["gen_object_acc"] == 0.75
    assert report["gen_style_acc_per_concept"][data.STYLES[1]] == 0.5
    assert report["gen_object_acc_per_concept"][data.OBJECTS[0]] == 0.5
