"""``ConvergenceRule``: when a stage's loss and concentrations have stopped moving, the stage ends
and is recorded as converged; a stage that is still moving runs to its cap and says so."""
from __future__ import annotations

import math
import random

import pytest
import torch
from pyro.infer.autoguide import AutoNormal

from pyro_dirichlet_prune import DirichletGuide, FitStep, SwitchModel, fit
from pyro_dirichlet_prune.inference.convergence import ConvergenceRule
from pyro_dirichlet_prune.models import build_model

N = 64


def _model() -> tuple[SwitchModel, list]:
    g = torch.Generator().manual_seed(0)
    net = build_model("lenet5", widths=(3, 4, 5, 2)).eval()
    x = torch.randn(N, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (N,), generator=g)
    return SwitchModel(net, num_data=N), [(x[i:i + 16], y[i:i + 16]) for i in range(0, N, 16)]


def _feed(rule: ConvergenceRule, guide, layers: list[str], losses, phi0s=None, stage: int = 0) -> int:
    """Steps fed to the rule until it ends the stage (or the stream ends); ``phi0s[t]`` sets every
    layer's total concentration (equal units) before step t."""
    for t, loss in enumerate(losses, start=1):
        if phi0s is not None:
            guide.set_concentrations({k: torch.full((guide.widths[k],), phi0s[t - 1] / guide.widths[k])
                                      for k in layers})
        if rule.on_step(FitStep(epoch=0, step=t, loss=loss, epoch_end=False, stage=stage, layers=layers,
                                guide=guide)):
            return t
    return len(losses)


def test_a_stationary_stage_converges_after_patience_still_windows():
    model, _ = _model()
    guide = DirichletGuide(model)
    rng = random.Random(0)
    losses = [1000.0 + rng.gauss(0, 5) for _ in range(1000)]
    phi0 = [50.0 * math.exp(rng.gauss(0, 0.01)) for _ in range(1000)]
    rule = ConvergenceRule(window=100, loss_rtol=1e-3, phi_rtol=0.01, patience=2)
    # windows end at 100, 200, 300: the second and third are still, so the stage ends at step 300
    assert _feed(rule, guide, ["conv1", "fc2"], losses, phi0) == 300
    stage = rule.stages[0]
    assert stage["converged"] and rule.converged and stage["steps"] == 300 and stage["criteria"] == ["loss", "phi0"]
    assert [e["step"] for e in stage["trace"]] == [100, 200, 300]
    assert stage["trace"][-1]["phi0"]["fc2"] == pytest.approx(50.0, rel=0.01)
    late = ConvergenceRule(window=100, loss_rtol=1e-3, phi_rtol=0.01, patience=2, min_steps=450)
    assert _feed(late, guide, ["conv1", "fc2"], losses, phi0) == 500 and late.converged


def test_growing_concentrations_keep_a_stage_going_though_the_loss_is_flat():
    model, _ = _model()
    guide = DirichletGuide(model)
    rng = random.Random(1)
    losses = [1000.0 + rng.gauss(0, 5) for _ in range(1000)]
    phi0 = [50.0 * 1.001 ** t for t in range(1000)]  # +10% a window of 100 steps: phi0 has not settled
    rule = ConvergenceRule(window=100, phi_rtol=0.05, patience=2)
    assert _feed(rule, guide, ["fc1"], losses, phi0) == 1000
    assert not rule.stages[0]["converged"] and not rule.converged
    # the same stream with phi0 held: converged at the third window's end
    held = ConvergenceRule(window=100, phi_rtol=0.05, patience=2)
    assert _feed(held, guide, ["fc1"], losses, [50.0] * 1000) == 300 and held.converged


def test_a_falling_loss_is_not_still_and_noise_is_not_movement():
    model, _ = _model()
    guide = DirichletGuide(model)
    falling = [1000.0 - 0.05 * t for t in range(1000)]  # 5 a window: 0.5% of the loss, above loss_rtol
    rule = ConvergenceRule(window=100, loss_rtol=1e-3, patience=1)
    assert _feed(rule, guide, ["fc1"], falling, [50.0] * 1000) == 1000 and not rule.converged
    # noise far above loss_rtol's share of the loss, but no trend: the standard error absorbs it
    rng = random.Random(2)
    noisy = [1000.0 + rng.gauss(0, 100) for _ in range(1000)]
    rule = ConvergenceRule(window=100, loss_rtol=1e-3, patience=1)
    assert _feed(rule, guide, ["fc1"], noisy, [50.0] * 1000) < 1000 and rule.converged


def test_an_autoguide_is_judged_by_its_loss_alone_and_each_stage_starts_afresh():
    model, _ = _model()
    rule = ConvergenceRule(window=20, patience=1)
    flat = [10.0] * 100
    assert _feed(rule, AutoNormal(model), model.layers, flat, stage=0) == 40
    guide = DirichletGuide(model)
    assert _feed(rule, guide, ["conv2"], flat, [20.0 * 1.01 ** t for t in range(100)], stage=1) == 100
    assert [s["criteria"] for s in rule.stages] == [["loss"], ["loss", "phi0"]]
    assert [s["converged"] for s in rule.stages] == [True, False] and not rule.converged


def test_fit_ends_a_stage_the_rule_calls_converged_and_runs_an_unsettled_one_to_its_cap():
    model, data = _model()
    loose = ConvergenceRule(window=20, loss_rtol=1.0, phi_rtol=1.0, patience=1)
    result = fit(model, DirichletGuide(model), data, epochs=50, schedule="sequential", seed=0, progress=False,
                 callback=loose)
    assert [s["steps"] for s in result.stages] == [40] * 4 and all(s["stopped"] for s in result.stages)
    assert [s["converged"] for s in loose.stages] == [True] * 4
    assert [s["layers"] for s in loose.stages] == [[layer] for layer in model.layers]

    strict = ConvergenceRule(window=20, loss_rtol=0.0, phi_rtol=0.0, patience=1)  # phi moves off its init
    result = fit(model, DirichletGuide(model, init_concentration=10.0), data, epochs=10, schedule="joint", seed=0,
                 progress=False, callback=strict)
    assert result.stages[0]["steps"] == 40 and not result.stages[0]["stopped"]
    assert strict.stages[0]["steps"] == 40 and not strict.converged

    watcher = ConvergenceRule(window=20, loss_rtol=1.0, phi_rtol=1.0, patience=1, stops=False)
    result = fit(model, DirichletGuide(model), data, epochs=50, schedule="sequential", seed=0, progress=False,
                 callback=watcher)  # it judges as the loose rule did, but the stages run their epochs
    assert [s["steps"] for s in result.stages] == [200] * 4 and not any(s["stopped"] for s in result.stages)
    assert [(s["converged"], s["converged_at"]) for s in watcher.stages] == [(True, 40)] * 4
    assert [len(s["trace"]) for s in watcher.stages] == [10] * 4 and watcher.settings()["stops"] is False


def test_with_phi0_left_out_the_means_decide():
    """The rule for a fit whose phi_0 is settled afterwards: growing phi_0 does not matter, drifting
    means do."""
    model, _ = _model()
    guide = DirichletGuide(model)
    flat = [1000.0] * 1000
    base = torch.tensor([0.4, 0.3, 0.2, 0.1])

    def feed(rule, shift_per_step):
        for t in range(1, 1001):
            m = base + shift_per_step * t * torch.tensor([1.0, -1.0, 0.0, 0.0])
            guide.set_concentrations({"conv2": 50.0 * 1.001 ** t * m})
            if rule.on_step(FitStep(epoch=0, step=t, loss=flat[t - 1], epoch_end=False, stage=0, layers=["conv2"],
                                    guide=guide)):
                return t
        return 1000

    settled = ConvergenceRule(window=100, phi_rtol=None, mean_atol=0.005, patience=2)
    assert feed(settled, 0.0) == 300 and settled.converged
    assert settled.stages[0]["criteria"] == ["loss", "means"]
    assert settled.stages[0]["trace"][-1]["mean_shift"]["conv2"] < 1e-6
    drifting = ConvergenceRule(window=100, phi_rtol=None, mean_atol=0.005, patience=2)
    assert feed(drifting, 1e-4) == 1000 and not drifting.converged  # 0.01 a window
    assert drifting.stages[0]["trace"][-1]["mean_shift"]["conv2"] == pytest.approx(0.01, rel=1e-3)
    last = drifting.stages[0]["trace"][-1]  # the shift in the posterior's own standard deviations
    m = base + 1e-4 * torch.arange(901, 1001).double().mean() * torch.tensor([1.0, -1.0, 0.0, 0.0])
    sd = (m * (1 - m) / (last["phi0"]["conv2"] + 1)).sqrt()
    assert last["mean_shift_sd"]["conv2"] == pytest.approx(float((0.01 / sd[:2]).max()), rel=1e-2)
    with_phi0 = ConvergenceRule(window=100, mean_atol=0.005, patience=2)
    assert feed(with_phi0, 0.0) == 1000 and with_phi0.stages[0]["criteria"] == ["loss", "phi0", "means"]


@pytest.mark.parametrize("kwargs, message", [
    ({"window": 10}, "window must be an int of at least 20"),
    ({"patience": 0}, "patience must be an int of at least 1"),
    ({"min_steps": -1}, "min_steps must be an int of at least 0"),
    ({"loss_rtol": -0.1}, "loss_rtol must be a non-negative number"),
    ({"phi_rtol": float("nan")}, "phi_rtol must be a non-negative number"),
    ({"mean_atol": -1.0}, "mean_atol must be a non-negative number"),
    ({"loss_rtol": None}, "loss_rtol must be a non-negative number"),
])
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ConvergenceRule(**kwargs)
