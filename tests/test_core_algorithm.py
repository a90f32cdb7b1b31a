"""Scores, step-size search and the growth loop on a toy objective whose optimum is known."""
from dataclasses import replace

import pytest
import torch

from razor_core import growth, preconditioner, update
from razor_core.gradients import compute_gradients, mismatch_gradients
from razor_core.objective import Objective, Validation
from razor_core.scoring import UnitScore, pareto_front, score_units
from razor_core.units import EditUnit, Slice, linear_units


class ToyObjective(Objective):
    """Forgetting needs both `a` and `b` to reach their targets; `c` is irrelevant. Retain prefers small moves."""

    def __init__(self):
        self.theta0 = {"a": torch.ones(4), "b": torch.ones(4), "c": torch.ones(4)}
        self.target = {"a": torch.tensor([3.2, 1, 1, 1]), "b": torch.tensor([1.0, 1, 1, -1])}
        self.gap = sum(float((self.theta0[k] - self.target[k]).pow(2).sum()) for k in self.target)

    def units(self):
        return [EditUnit(f"toy.{k}", "mlp", (Slice(k),)) for k in ("a", "b", "c")]  # one tower: "toy"

    def base_params(self):
        return self.theta0

    def batches(self, split):
        return [None]

    def forget_loss(self, params, batch):
        return 1 - sum((params[k] - self.target[k]).pow(2).sum() for k in self.target) / self.gap

    def retain_loss(self, params, batch):
        return sum((params[k] - self.theta0[k] - 0.01).pow(2).sum() for k in params)

    def mismatch_loss(self, params, batch):
        return sum((params[k] - self.theta0[k]).pow(2).sum() for k in params) / self.gap

    def retain_outputs(self, params, batch):
        # Retain behaviour reads `c` and the last entry of `a`: steps must leave those alone.
        return torch.cat([params["c"], params["a"][3:]])

    def validate(self, params):
        drift = sum(float((params[k] - self.theta0[k]).pow(2).sum()) for k in params) / self.gap
        return Validation(float(self.forget_loss(params, None)), drift)


def test_score_formula_and_signed_cosine():
    params = {"a": torch.tensor([3.0, 4.0]), "b": torch.tensor([3.0, 4.0])}
    g_f = {"a": torch.tensor([1.0, 0.0]), "b": torch.tensor([1.0, 0.0])}
    g_r = {"a": torch.tensor([-1.0, 0.0]), "b": torch.tensor([1.0, 0.0])}
    units = [EditUnit("a", "mlp", (Slice("a"),)), EditUnit("b", "mlp", (Slice("b"),))]
    opposed, aligned = score_units(units, params, g_f, g_r, alpha=1.0)
    assert opposed.importance == pytest.approx(0.2)
    assert opposed.cosine == pytest.approx(-1.0) and opposed.score == pytest.approx(0.4)
    assert aligned.cosine == pytest.approx(1.0) and aligned.score == pytest.approx(0.0)
    plain = score_units(units, params, g_f, g_r, alpha=0.0)
    assert plain[0].score == plain[1].score == pytest.approx(0.2)


def test_pareto_front_keeps_undominated_units():
    scores = [UnitScore("hi_imp", 2.0, 0.5, 0), UnitScore("lo_cos", 1.0, 0.1, 0), UnitScore("dominated", 0.5, 0.6, 0)]
    assert {s.unit for s in pareto_front(scores)} == {"hi_imp", "lo_cos"}


def test_growth_adds_units_until_the_target_is_reached_then_stops():
    config = growth.RazorConfig(max_initial_units=1, threshold=1.0, forget_target=0.9, drift_tolerance=10.0,
                                units_per_round=1, weights=growth.StepWeights(lambda_retain=0.0, lambda_mismatch=0.0))
    result = growth.run(ToyObjective(), config)
    assert [u.name for u in result.units] == ["toy.a", "toy.b"]  # a first (larger gradient), then grown by b
    assert len(result.rounds) == 2                            # stopped at the target, not at the budget of 6
    assert result.rounds[-1].forget_progress >= 0.9
    assert "c" not in result.delta                            # units outside the edit set are untouched


def test_a_growth_round_adds_units_per_round_units_at_once():
    config = growth.RazorConfig(max_initial_units=1, threshold=1.0, forget_target=0.9, drift_tolerance=10.0,
                                units_per_round=2, weights=growth.StepWeights(lambda_retain=0.0, lambda_mismatch=0.0))
    result = growth.run(ToyObjective(), config)
    assert [u.name for u in result.units] == ["toy.a", "toy.b", "toy.c"]
    assert result.rounds[1].added == ["toy.b", "toy.c"]


def test_growth_stops_after_one_round_when_the_first_step_suffices():
    config = growth.RazorConfig(max_initial_units=1, threshold=1.0, forget_target=0.5, drift_tolerance=10.0)
    result = growth.run(ToyObjective(), config)
    assert len(result.rounds) == 1 and result.rounds[0].forget_progress >= 0.5


def test_step_search_respects_the_drift_tolerance():
    config = growth.RazorConfig(max_initial_units=2, threshold=0.0, forget_target=1.0, drift_tolerance=0.05,
                                max_rounds=1)
    result = growth.run(ToyObjective(), config)
    assert result.rounds[0].retain_drift <= 0.05
    assert result.rounds[0].forget_progress > 0



def _peak_at_one_percent() -> tuple[ToyObjective, EditUnit, dict[str, torch.Tensor]]:
    """Forget progress along the direction is 1 − (200·s − 2)²/4: it peaks at s = 0.01; drift is (200·s)²/4."""
    objective = ToyObjective()
    objective.theta0 = {"a": 100 * torch.ones(4)}
    objective.target = {"a": objective.theta0["a"] + torch.tensor([2.0, 0, 0, 0])}
    objective.gap = 4.0
    unit = objective.units()[0]
    return objective, unit, {unit.name: torch.tensor([1.0, 0, 0, 0])}


def test_step_search_stops_doubling_past_the_forget_peak():
    """Drift far inside the tolerance: the search must stop two probes after forget progress peaks (larger steps
    only overshoot the target) instead of doubling on to the scale cap, and still return the peak."""
    objective, unit, dirs = _peak_at_one_percent()
    found = update.search_step(objective, objective.theta0, [unit], dirs, drift_tolerance=1e6, start=0.002,
                               bisections=0)
    exhaustive = update.search_step(objective, objective.theta0, [unit], dirs, drift_tolerance=1e6, start=0.002,
                                    bisections=0, patience=100)
    assert (found.probes, exhaustive.probes) == (5, 9)  # s = 0.002·2^k: peak at k = 2, cap 1.0 at k = 8
    assert found.scale == exhaustive.scale == pytest.approx(0.008)
    assert found.validation.forget_progress > 0.9


def test_step_search_halves_when_the_peak_lies_below_its_start():
    objective, unit, dirs = _peak_at_one_percent()
    found = update.search_step(objective, objective.theta0, [unit], dirs, drift_tolerance=1e6, start=0.064,
                               bisections=0)
    # up: 0.064, then 0.128 and 0.256 overshoot further; down: 0.032, 0.016, 0.008 improve, 0.004 does not
    assert found.probes == 7
    assert found.scale == pytest.approx(0.008) and found.validation.forget_progress > 0.9


def test_step_search_halves_below_its_start_until_the_drift_is_within_tolerance():
    objective, unit, dirs = _peak_at_one_percent()
    found = update.search_step(objective, objective.theta0, [unit], dirs, drift_tolerance=0.011, bisections=0)
    # 0.016, 0.008, 0.004, 0.002 drift too far; 0.001, the smallest step it halves to, is within the tolerance
    assert found.scale == pytest.approx(update.MIN_SCALE) == pytest.approx(0.001)
    assert found.validation.retain_drift <= 0.011 and found.validation.forget_progress > 0
    assert found.probes == 5


def test_step_search_stops_bisecting_where_the_peak_is_flat():
    """A bisection probe as good as the best (within `settled`) ends the search; bisecting on would only move the
    step along a flat peak."""
    objective, unit, dirs = _peak_at_one_percent()
    settled = update.search_step(objective, objective.theta0, [unit], dirs, drift_tolerance=1e6, start=0.002)
    exhaustive = update.search_step(objective, objective.theta0, [unit], dirs, drift_tolerance=1e6, start=0.002,
                                    settled=0.0)
    # doubling ends at 0.032 with the best at 0.008; the first bisection probe, 0.012, is as good as 0.008
    assert (settled.probes, exhaustive.probes) == (6, 9)
    assert settled.validation.forget_progress == pytest.approx(0.96)
    assert exhaustive.validation.forget_progress == pytest.approx(1.0, abs=0.01)


def test_step_search_computes_the_retain_drift_only_for_steps_that_could_win():
    """A step that forgets no more than the best so far is ruled out on forget progress alone: its retain half is
    never computed, and the search ends where a search that computes both halves of every probe ends."""
    eager_objective, unit, dirs = _peak_at_one_percent()
    eager = update.search_step(eager_objective, eager_objective.theta0, [unit], dirs, drift_tolerance=1e6)
    objective, drifts = _peak_at_one_percent()[0], []

    def forget_first(params):
        v = objective.validate(params)
        return v.forget_progress, lambda: drifts.append(params) or v.retain_drift
    objective.validate_forget_first = forget_first
    lazy = update.search_step(objective, objective.theta0, [unit], dirs, drift_tolerance=1e6)
    assert (lazy.scale, lazy.validation, lazy.probes) == (eager.scale, eager.validation, eager.probes)
    assert 0 < len(drifts) < lazy.probes


class DipThenRise(ToyObjective):
    """Forget progress along `a` peaks at 0.625 for a step of 0.005 from 0.6 where it starts, dips far below, and
    rises again towards 0.5 for steps near 1: a search started at large steps climbs a slope that never beats
    standing still (seen on MiniCanvas when a growth round began at half the previous round's large step)."""

    def validate(self, params):
        s = float(params["a"][0] - self.theta0["a"][0]) / 2  # the search's scale: ‖a‖ = 2
        progress = 0.6 + 10 * s - 1000 * s * s if s < 0.05 else s - 0.5
        return Validation(progress, 0.0)


def test_step_search_must_beat_the_weights_it_starts_from():
    objective = DipThenRise()
    unit = objective.units()[0]
    dirs = {unit.name: torch.tensor([1.0, 0, 0, 0])}
    kwargs = {"drift_tolerance": 1.0, "start": 0.189}
    blind = update.search_step(objective, objective.theta0, [unit], dirs, **kwargs)
    assert blind.validation.forget_progress < 0.6 and blind.scale > 0.25  # climbed the far slope
    found = update.search_step(objective, objective.theta0, [unit], dirs, **kwargs,
                               baseline=objective.validate(objective.theta0))
    assert found.validation.forget_progress > 0.62 and found.scale < 0.01
    nothing = update.search_step(objective, objective.theta0, [unit], dirs, **kwargs, baseline=Validation(0.7, 0.0))
    assert nothing.scale == 0.0 and nothing.validation.forget_progress == 0.7  # no step beats it: stay


def test_growth_rounds_start_their_search_at_half_the_previous_step(monkeypatch):
    starts = []
    bracket = update.StepSearch.bracket

    def recording(self, start, **kwargs):
        starts.append(start)
        return bracket(self, start, **kwargs)
    monkeypatch.setattr(update.StepSearch, "bracket", recording)
    config = growth.RazorConfig(max_initial_units=1, threshold=1.0, forget_target=0.9, drift_tolerance=10.0,
                                weights=growth.StepWeights(lambda_retain=0.0, lambda_mismatch=0.0))
    result = growth.run(ToyObjective(), config)
    assert len(result.rounds) == 2
    assert starts == [update.START_SCALE, pytest.approx(result.rounds[0].scale / 2)]
    assert all(0 <= r.seconds < 60 for r in result.rounds)  # wall-clock seconds, not a clock minus a step size



def test_retain_sketch_keeps_steps_out_of_retain_sensitive_directions():
    objective = ToyObjective()
    result = growth.run(objective, growth.RazorConfig(max_initial_units=2, threshold=0.0, drift_tolerance=10.0,
                                                      retain_sketch=4))
    assert result.delta["a"][0] != 0          # forgetting still moves a
    assert float(result.delta["a"][3]) == pytest.approx(0.0, abs=1e-6)  # but not the entry retain reads


class HalfPrecisionObjective(ToyObjective):
    """The forget loss goes through float16 with a ×100 gain (as a half-precision network would): at a loss scale of
    2¹² its backward overflows fp16 (4096·100 > 65504), at 2⁸ it does not."""
    gradient_scale = 2.0 ** 12

    def forget_loss(self, params, batch):
        return (params["a"].half() * 100).float().sum() + super().forget_loss(params, batch)


def test_loss_scaling_backs_off_on_overflow_and_returns_unscaled_gradients():
    scaled = compute_gradients(HalfPrecisionObjective(), ToyObjective().theta0)
    plain = compute_gradients(ToyObjective(), ToyObjective().theta0)
    assert torch.isfinite(scaled.forget["a"]).all()
    assert torch.allclose(scaled.forget["a"] - plain.forget["a"], torch.full((4,), 100.0))
    for k in ("b", "c"):
        assert torch.equal(scaled.forget[k], plain.forget[k])
        assert torch.equal(scaled.retain[k], plain.retain[k])


def _as_float32(params):
    return {k: v.float() for k, v in params.items()}


class Float8Objective(ToyObjective):
    """θ⁰ stored in float8, as an fp8 checkpoint's weights (1.0 is exact in e4m3); the losses cast what they read to
    float32, as ComfyUI's manual-cast layers do. float8 supports no arithmetic (no addition, norm or isfinite)."""

    def base_params(self):
        return {k: v.to(torch.float8_e4m3fn) for k, v in self.theta0.items()}

    def forget_loss(self, params, batch):
        return super().forget_loss(_as_float32(params), batch)

    def retain_loss(self, params, batch):
        return super().retain_loss(_as_float32(params), batch)

    def mismatch_loss(self, params, batch):
        return super().mismatch_loss(_as_float32(params), batch)

    def retain_outputs(self, params, batch):
        return super().retain_outputs(_as_float32(params), batch)

    def validate(self, params):
        return super().validate(_as_float32(params))


def test_float8_weights_get_float32_gradients_and_the_same_edit_without_a_float32_copy():
    """θ⁰ stays float8; razor_core widens only what it computes with (the gradient leaves, θ + Δ of the edit set)."""
    fp8, plain = Float8Objective(), ToyObjective()
    theta = fp8.base_params()
    grads, expected = compute_gradients(fp8, theta), compute_gradients(plain, plain.theta0)
    assert all(grads.forget[k].dtype == torch.float32 and torch.equal(grads.forget[k], expected.forget[k])
               and torch.equal(grads.retain[k], expected.retain[k]) for k in theta)
    config = growth.RazorConfig(max_initial_units=1, threshold=1.0, forget_target=0.9, drift_tolerance=10.0,
                                units_per_round=1)
    result, reference = growth.run(fp8, config), growth.run(plain, config)
    three_units = 3 * 4 * 8 / 2 ** 30  # the float32 totals of all three 4-element units, in GB
    assert len(growth.gradient_groups(plain.units(), plain.theta0, three_units)) == 1
    assert len(growth.gradient_groups(fp8.units(), theta, three_units)) == 2  # and a float32 leaf of each
    assert [u.name for u in result.units] == [u.name for u in reference.units]
    assert all(torch.equal(result.delta[k], reference.delta[k]) for k in reference.delta)


def test_mismatch_gradient_covers_only_the_units_a_step_moves():
    objective = ToyObjective()
    edited = {k: v + 0.5 for k, v in objective.theta0.items()}
    grads, passes = mismatch_gradients(objective, edited, [objective.units()[0]])
    assert set(grads) == {"a"} and passes == 1
    assert torch.allclose(grads["a"], torch.full((4,), 2 * 0.5 / objective.gap))  # ∇ of ‖a − a⁰‖² / gap


def test_slug_mode_is_one_layer_one_round_forget_only():
    result = growth.run(ToyObjective(), growth.RazorConfig(method="slug", drift_tolerance=10.0))
    assert len(result.units) == 1 and len(result.rounds) == 1


def test_a_kept_scoring_holds_round_zeros_gradients_only_and_grows_the_same_edit():
    """What Score Heads hands on (and ComfyUI caches): the gradients of the units round 0 can start from, not two
    float32 copies of every candidate; growth from it is the growth from the full scoring."""
    objective = ToyObjective()
    full = growth.score(objective)
    kept = growth.for_round_zero(full, objective.units(), max_initial_units=1)
    assert set(kept.gradients.forget) == set(kept.gradients.retain) == {"a"}  # b scores below half of a; c is 0
    assert kept.scores == full.scores and set(full.gradients.forget) == {"a", "b", "c"}
    for config in (growth.RazorConfig(max_initial_units=1), growth.RazorConfig(method="slug", drift_tolerance=10.0)):
        expected, result = growth.run(objective, config, scoring=full), growth.run(objective, config, scoring=kept)
        assert [u.name for u in result.units] == [u.name for u in expected.units]
        assert result.delta.keys() == expected.delta.keys()
        assert all(torch.equal(result.delta[k], expected.delta[k]) for k in expected.delta)
    # Settings the kept scoring cannot start (b joins round 0 at a lower threshold): its gradients are recomputed.
    wider = growth.RazorConfig(threshold=0.1, max_rounds=1)
    result, fresh = growth.run(objective, wider, scoring=kept), growth.run(objective, wider)
    assert [u.name for u in result.units] == [u.name for u in fresh.units] == ["toy.a", "toy.b"]
    assert all(torch.equal(result.delta[k], fresh.delta[k]) for k in fresh.delta)


def test_scoring_in_groups_within_a_gradient_budget_gives_the_same_scores_and_edit():
    """A budget below the candidates' gradients scores them in groups, one pass each, then computes only the kept
    units' gradients: the scores, the gradients kept and the grown edit are those of the single pass."""
    objective = ToyObjective()
    assert [len(g) for g in growth.gradient_groups(objective.units(), objective.theta0, None)] == [3]
    one_unit = 2 * 4 * 4 / 2 ** 30  # the float32 forget and retain gradients of one 4-element unit, in GB
    assert [[u.name for u in g] for g in growth.gradient_groups(objective.units(), objective.theta0, one_unit)] == [
        ["toy.a"], ["toy.b"], ["toy.c"]]
    assert len(growth.gradient_groups(objective.units(), objective.theta0, 2 * one_unit)) == 2
    config = growth.RazorConfig(max_initial_units=1, threshold=1.0, forget_target=0.9, drift_tolerance=10.0,
                                units_per_round=1, weights=growth.StepWeights(lambda_retain=0.0, lambda_mismatch=0.0))
    grouped_config = replace(config, gradient_budget_gb=one_unit)
    single, grouped = growth.score(objective, config), growth.score(objective, grouped_config)
    assert grouped.scores == single.scores
    assert set(grouped.gradients.forget) == {"a"}  # round 0 starts from a (razor), or from a's layer (slug)
    assert torch.equal(grouped.gradients.forget["a"], single.gradients.forget["a"])
    assert grouped.gradients.backward_passes == 4 * single.gradients.backward_passes  # three groups, then the kept
    expected, result = growth.run(objective, config), growth.run(objective, grouped_config)
    assert [u.name for u in result.units] == [u.name for u in expected.units] == ["toy.a", "toy.b"]
    assert all(torch.equal(result.delta[k], expected.delta[k]) for k in expected.delta)
    assert result.backward_passes > expected.backward_passes


class TwoTowerObjective(ToyObjective):
    """Tower `loud` has the larger gradient/weight ratio but every move of it costs retention; `quiet` (large
    weights, so a low ratio) forgets freely."""

    def __init__(self):
        self.theta0 = {"x": torch.ones(4), "y": 10 * torch.ones(4)}
        self.target = {"x": torch.tensor([3.0, 1, 1, 1]), "y": torch.tensor([16.0, 10, 10, 10])}
        self.gap = sum(float((self.theta0[k] - self.target[k]).pow(2).sum()) for k in self.target)

    def units(self):
        return [EditUnit("loud.x", "mlp", (Slice("x"),)), EditUnit("quiet.y", "mlp", (Slice("y"),))]

    def retain_outputs(self, params, batch):
        return params["x"]

    def validate(self, params):
        drift = 10 * float((params["x"] - self.theta0["x"]).pow(2).sum()) / self.gap
        return Validation(float(self.forget_loss(params, None)), drift)


def test_round_zero_keeps_the_tower_that_forgets_within_the_tolerance():
    objective = TwoTowerObjective()
    scores = {s.unit: s.score for s in growth.run(objective, growth.RazorConfig(max_rounds=1)).scores}
    assert scores["loud.x"] > scores["quiet.y"]  # a global ranking would start from the loud tower
    result = growth.run(objective, growth.RazorConfig(max_rounds=1, drift_tolerance=0.05))
    assert [u.name for u in result.units] == ["quiet.y"] and "x" not in result.delta
    assert result.rounds[0].forget_progress > 0.5


def test_round_zero_refines_only_the_proposal_that_forgets_most_on_the_coarse_grid(monkeypatch):
    bisected = []
    bisect = update.StepSearch.bisect

    def recording(self, *args, **kwargs):
        bisected.append([u.name for u in self.units])
        return bisect(self, *args, **kwargs)
    monkeypatch.setattr(update.StepSearch, "bisect", recording)
    result = growth.run(TwoTowerObjective(), growth.RazorConfig(max_rounds=1, drift_tolerance=0.05))
    assert bisected == [["quiet.y"]] and [u.name for u in result.units] == ["quiet.y"]
    assert result.rounds[0].probes > 4  # the loud tower's probes are counted too


class LinearObjective(Objective):
    """Two linear layers, `first.net` then `second.net`, in two towers: forgetting maps the forget inputs' outputs to
    a target, retention keeps the retain inputs' outputs. The retain data comes in two micro-batches."""

    def __init__(self, gradient_scale: float = 1.0):
        torch.manual_seed(0)
        self.root = torch.nn.ModuleDict({"first": torch.nn.ModuleDict({"net": torch.nn.Linear(6, 6)}),
                                         "second": torch.nn.ModuleDict({"net": torch.nn.Linear(6, 6)})})
        self.root.requires_grad_(False)
        self.theta0 = {k: v.detach() for k, v in self.root.named_parameters()}
        self.forget_x, self.retain_x = torch.randn(8, 6), torch.randn(16, 6)
        self.forget_x[:, -1] += 4.0  # the concept lives on the last input feature
        self.target = torch.randn(8, 6)
        self.frozen = self.retain_outputs(self.theta0, slice(None))
        self.gap = float((self.outputs(self.theta0, self.forget_x) - self.target).pow(2).mean())
        self.gradient_scale, self.restarts, self.retain_passes = gradient_scale, 0, 0

    def outputs(self, params, x):
        def layer(name, x):
            own = {k.removeprefix(f"{name}.net."): v for k, v in params.items() if k.startswith(f"{name}.")}
            return torch.func.functional_call(self.root[name].net, own, (x,))
        return layer("second", layer("first", x))

    def units(self):
        return linear_units(self.root, ["first.net", "second.net"])

    def base_params(self):
        return self.theta0

    def batches(self, split):
        return [slice(None)] if split == "forget" else [slice(0, 8), slice(8, 16)]

    def forget_loss(self, params, batch):
        return 1 - (self.outputs(params, self.forget_x) - self.target).pow(2).mean() / self.gap

    def retain_loss(self, params, batch):
        return (self.retain_outputs(params, batch) - self.frozen[batch]).pow(2).mean()

    def mismatch_loss(self, params, batch):
        loss = self.retain_loss(params, batch) / self.gap
        if self.gradient_scale > 1 and batch.start == 0:  # the first micro-batch overflows once: a restart
            self.gradient_scale, self.restarts = 1.0, self.restarts + 1
            return loss * float("inf")
        return loss

    def retain_outputs(self, params, batch):
        return self.outputs(params, self.retain_x[batch])

    def validate(self, params):
        with torch.no_grad():
            progress = float(self.forget_loss(params, None))
            drift = float((self.retain_outputs(params, slice(None)) - self.frozen).pow(2).mean()) / self.gap
        return Validation(progress, drift)

    def module_root(self):
        return self.root

    def run_retain(self, params):
        self.retain_passes += 1
        super().run_retain(params)


@pytest.mark.parametrize("gradient_scale", [1.0, 2.0 ** 12])
def test_growth_rounds_record_the_preconditioners_moments_in_the_mismatch_pass(monkeypatch, gradient_scale):
    """Round 0 measures every tower's layers in one retain pass; each growth round records its layers' retain inputs
    during the mismatch gradient's pass (which covers the same data at the same weights) instead of a pass of its
    own, and a pass that starts over (loss-scale overflow) records them once, not one and a half times."""
    recorded = []
    moments_for = growth.preconditioner_for

    def recording(objective, units, params, config, moments=None, closed_phase=False):
        fresh = preconditioner.retain_input_moments(objective.module_root(), units, lambda: Objective.run_retain(
            objective, params))
        recorded.append((moments, fresh))
        return moments_for(objective, units, params, config, moments, closed_phase)
    monkeypatch.setattr(growth, "preconditioner_for", recording)
    objective = LinearObjective(gradient_scale)
    config = growth.RazorConfig(max_initial_units=1, forget_target=1.0, max_rounds=2, drift_tolerance=1.0,
                                units_per_round=1)
    result = growth.run(objective, config)
    assert len(result.rounds) == 2 and objective.retain_passes == 1  # round 0 only, both towers at once
    assert objective.restarts == (1 if gradient_scale > 1 else 0)
    (none, _), (moments, fresh) = recorded
    assert none is None and set(moments) == set(fresh) == {"first.net", "second.net"}
    for name in fresh:
        torch.testing.assert_close(moments[name].moment(), fresh[name].moment())


@pytest.mark.parametrize("kwargs, message", [
    ({"method": "esd"}, "method must be"), ({"max_rounds": 0}, "budgets"), ({"forget_target": 0.0}, "forget_target"),
    ({"drift_tolerance": -1.0}, "drift_tolerance"), ({"units_per_round": 0}, "budgets"),
    ({"kv_step": "exact"}, "kv_step"), ({"attack_rounds": -1}, "attack_rounds"),
    ({"gradient_budget_gb": 0.0}, "gradient_budget_gb"),
])
def test_bad_settings_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        growth.RazorConfig(**kwargs)
