"""The total concentration from the curvature (``inference.concentration``): the solver against a
grid, the curvature against its own pieces, and phi_0* against what a long full-batch fit reaches,
from either initial value."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.distributions import Dirichlet, kl_divergence

from pyro_dirichlet_prune import DirichletGuide, SwitchModel, fit
from pyro_dirichlet_prune.inference.concentration import layer_curvature, optimal_phi0, settle_concentrations
from pyro_dirichlet_prune.models.switch_points import SwitchPoint

N = 2000


class MLP(nn.Module):
    """10 → 12 (switched) → ReLU → 4."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(10, 12), nn.Linear(12, 4)

    def switch_points(self) -> list[SwitchPoint]:
        return [SwitchPoint("fc1", self.fc1)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def _problem():
    torch.manual_seed(0)
    net = MLP().eval()
    with torch.no_grad():
        net.fc2.weight.mul_(4.0)
    x = torch.randn(N, 10, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = torch.distributions.Categorical(logits=net(x)).sample()
    return net, x, y


def test_optimal_phi0_maximises_the_profile_on_a_grid():
    mean = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64)
    for c in (0.5, 20.0, 3000.0):
        grid = torch.logspace(-1, 6, 20001, dtype=torch.float64)
        prior = Dirichlet(torch.full((4,), 0.5, dtype=torch.float64))
        values = torch.stack([-c / (p + 1) - kl_divergence(Dirichlet(p * mean), prior) for p in grid])
        best = float(grid[values.argmax()])
        assert optimal_phi0(c, mean, 0.5) == pytest.approx(best, rel=2e-3)
    # more curvature, more concentration: about 2c / (D - 1) once large
    assert optimal_phi0(3000.0, mean, 0.5) == pytest.approx(2 * 3000.0 / 3, rel=0.05)


def test_the_curvature_adds_over_minibatches_and_scales_a_subsample_to_the_data():
    net, x, y = _problem()
    model = SwitchModel(net, num_data=N)
    mean = torch.full((12,), 1 / 12, dtype=torch.float64)
    whole = layer_curvature(model, "fc1", mean, [(x, y)])
    assert whole > 0
    assert layer_curvature(model, "fc1", mean, [(x[:700], y[:700]), (x[700:], y[700:])]) == pytest.approx(
        whole, rel=1e-6)
    half = layer_curvature(model, "fc1", mean, [(x[:1000], y[:1000]), (x[1000:], y[1000:])], max_examples=1000)
    first = layer_curvature(SwitchModel(net, num_data=1000), "fc1", mean, [(x[:1000], y[:1000])])
    assert half == pytest.approx(2 * first, rel=1e-6)


def test_settled_phi0_is_where_a_long_full_batch_fit_goes_from_either_start():
    net, x, y = _problem()
    settled = {}
    for init in (1.0, 10.0):
        model = SwitchModel(net, num_data=N)
        guide = DirichletGuide(model, init_concentration=init)
        fit(model, guide, [(x, y)], epochs=3000, schedule="joint", seed=0, progress=False)
        fitted = float(guide.concentration("fc1").detach().sum())
        means = guide.concentration("fc1").detach() / fitted
        out = settle_concentrations(model, guide, [(x, y)], schedule="joint")["fc1"]
        assert out["phi0_before"] == pytest.approx(fitted)
        assert out["phi0"] == pytest.approx(fitted, rel=0.1), (init, out)
        after = guide.concentration("fc1").detach()
        assert torch.allclose(after / after.sum(), means, atol=1e-6)  # the means are kept
        settled[init] = out["phi0"]
    assert settled[1.0] == pytest.approx(settled[10.0], rel=0.15)


def test_errors_name_the_argument():
    net, x, y = _problem()
    model = SwitchModel(net, num_data=N)
    with pytest.raises(ValueError, match="layer: no switched layer named 'fc9'; the layers are fc1"):
        layer_curvature(model, "fc1".replace("1", "9"), torch.full((12,), 1 / 12), [(x, y)])
    with pytest.raises(ValueError, match=r"mean must have 12 entries for fc1, got shape \(3,\)"):
        layer_curvature(model, "fc1", torch.full((3,), 1 / 3), [(x, y)])
    with pytest.raises(ValueError, match="c must be a non-negative number"):
        optimal_phi0(-1.0, torch.full((3,), 1 / 3), 0.5)
    with pytest.raises(ValueError, match="mean must be a vector of positive entries summing to one"):
        optimal_phi0(1.0, torch.tensor([0.5, 0.6]), 0.5)
    with pytest.raises(TypeError, match="guide must be a DirichletGuide"):
        settle_concentrations(model, object(), [(x, y)])
    assert math.isfinite(optimal_phi0(0.0, torch.full((3,), 1 / 3), 0.5))


def test_switch_learning_can_settle_and_says_so():
    from pyro_dirichlet_prune.data import Split
    from pyro_dirichlet_prune.inference.svi import SwitchConfig, fit_switches
    from pyro_dirichlet_prune.models import SwitchedNetwork

    net, x, y = _problem()
    cfg = SwitchConfig(concentration="settled", batch_size=500, schedule="joint")
    done = fit_switches(SwitchedNetwork(net), Split(x, y), cfg)
    phi = done.guide.concentration("fc1").detach()
    assert float(phi.sum()) == pytest.approx(done.settled["fc1"]["phi0"], rel=1e-5)
    plain = fit_switches(SwitchedNetwork(net), Split(x, y), SwitchConfig(batch_size=500, schedule="joint",
                                                                         concentration="fitted"))
    assert plain.settled is None
    assert float(plain.guide.concentration("fc1").detach().sum()) != pytest.approx(done.settled["fc1"]["phi0"], rel=0.05)
    for bad in (SwitchConfig(concentration="settled", guide="normal"),
                SwitchConfig(concentration="settled", weight_scale=0.1, schedule="joint")):
        with pytest.raises(ValueError, match="concentration='settled' needs guide 'dirichlet' or 'dirichlet-mean'"):
            bad.validate()
    with pytest.raises(ValueError, match="unknown concentration 'exact'; choose one of auto, fitted, settled"):
        SwitchConfig(concentration="exact").validate()
    from pyro_dirichlet_prune.inference.builders import DirichletBuilder

    class Mine(DirichletBuilder):  # a user's own builder of a DirichletGuide settles too
        name = "mine"

    SwitchConfig(concentration="settled", guide=Mine()).validate()


def test_switch_learning_until_converged_records_every_stage():
    from pyro_dirichlet_prune.data import Split
    from pyro_dirichlet_prune.inference.svi import SwitchConfig, fit_switches
    from pyro_dirichlet_prune.models import SwitchedNetwork

    net, x, y = _problem()
    cfg = SwitchConfig(until_converged=True, concentration="settled", batch_size=100, epochs=3)
    done = fit_switches(SwitchedNetwork(net), Split(x, y), cfg)
    conv = done.convergence
    assert conv["rule"]["window"] == 20 and conv["rule"]["phi_rtol"] is None and conv["cap_epochs"] == 3
    assert [s["layers"] for s in conv["stages"]] == [["fc1"]] and conv["stages"][0]["criteria"] == ["loss", "means"]
    stage = conv["stages"][0]
    assert stage["steps"] == done.stages[0]["steps"] and [e["step"] for e in stage["trace"]] == [20, 40, 60][:len(
        stage["trace"])]
    assert conv["converged"] == stage["converged"] == done.stages[0]["stopped"]
    watched = fit_switches(SwitchedNetwork(net), Split(x, y), SwitchConfig(batch_size=500, epochs=1)).convergence
    assert watched["rule"]["stops"] is False and watched["stages"][0]["trace"] == []  # 4 steps: no window closed
    assert watched["converged"] is False and watched["stages"][0]["steps"] == 4


def test_random_probes_estimate_the_exact_curvature_without_bias():
    """tr(H S) = E[z^T H z] for z ~ Normal(0, S): the probes' average over many draws meets the
    exact trace, a single probe is noisy, and the same generator seed gives the same estimate."""
    net, x, y = _problem()
    model = SwitchModel(net, num_data=N)
    mean = torch.distributions.Dirichlet(torch.full((12,), 3.0)).sample().double()
    mean = mean / mean.sum()
    batches = [(x[i:i + 250], y[i:i + 250]) for i in range(0, N, 250)]
    exact = layer_curvature(model, "fc1", mean, batches)
    draws = [layer_curvature(model, "fc1", mean, batches, probes=4, generator=torch.Generator().manual_seed(k))
             for k in range(40)]
    average = sum(draws) / len(draws)
    spread = torch.tensor(draws).std().item()
    assert spread > 1e-3 * exact  # a random estimate ...
    assert average == pytest.approx(exact, abs=3 * spread / math.sqrt(len(draws)))  # ... of the exact trace
    again = layer_curvature(model, "fc1", mean, batches, probes=4, generator=torch.Generator().manual_seed(3))
    assert again == draws[3]
    with pytest.raises(ValueError, match="probes must be a positive int or None, got 0"):
        layer_curvature(model, "fc1", mean, batches, probes=0)


def test_settling_at_every_epoch_end_forgets_the_initial_value_and_keeps_the_means():
    """SettleEachEpoch: after each epoch the active layer's phi_0 is the optimum given its means at
    that moment (the means untouched), and from init 1 and init 10 a minibatch fit ends with the
    same phi_0 and means, where an unsettled fit of the same budget still carries its start."""
    from pyro_dirichlet_prune import SplitLoader
    from pyro_dirichlet_prune.data import Split
    from pyro_dirichlet_prune.inference.concentration import SettleEachEpoch
    from pyro_dirichlet_prune.loop import LoopCallback

    net, x, y = _problem()
    ends: dict[float, tuple] = {}
    for init in (1.0, 10.0):
        for settle in (False, True):
            model = SwitchModel(net, num_data=N)
            guide = DirichletGuide(model, init_concentration=init)
            checks: list = []

            class Check(LoopCallback):  # told after SettleEachEpoch, which is listed first
                def on_epoch_end(self, event, guide=guide, model=model, checks=checks):
                    phi = guide.concentration("fc1").detach().double()
                    m = phi / phi.sum()
                    c = layer_curvature(model, "fc1", m, [(x, y)])
                    checks.append((float(phi.sum()), optimal_phi0(c, m, model.alpha0)))

            settler = SettleEachEpoch(model, guide, Split(x, y), schedule="joint", max_examples=None)
            loader = SplitLoader(Split(x, y), 200, True, torch.Generator().manual_seed(0))
            fit(model, guide, loader, epochs=8, schedule="joint", seed=0, progress=False, lr_decay=1.0,
                callback=[settler, Check()] if settle else [])
            phi = guide.concentration("fc1").detach().double()
            ends[(init, settle)] = (float(phi.sum()), phi / phi.sum())
            if settle:
                assert len(settler.history) == 8 and len(checks) == 8
                for phi0, best in checks:
                    assert phi0 == pytest.approx(best, rel=1e-4)
    settled = [ends[(1.0, True)], ends[(10.0, True)]]
    unsettled = [ends[(1.0, False)], ends[(10.0, False)]]
    assert settled[0][0] == pytest.approx(settled[1][0], rel=0.1)  # 15.5 and 16.6 when written
    assert unsettled[1][0] / unsettled[0][0] > 5  # 12.6 and 117: the fixed budget remembers where it began
    gap = float((settled[0][1] - settled[1][1]).abs().max())
    assert gap < 0.02 and gap < float((unsettled[0][1] - unsettled[1][1]).abs().max())  # and so do its means
    with pytest.raises(TypeError, match="guide must be a DirichletGuide"):
        SettleEachEpoch(SwitchModel(net, num_data=N), object(), [(x, y)])


def test_optimal_concentrations_without_a_likelihood_is_the_prior():
    """With g = H = 0 the expansion is the KL alone, whose optimum is phi = alpha0 1; the trust
    region holds a step to within e^trust of the start."""
    from pyro_dirichlet_prune.inference.concentration import optimal_concentrations

    zero_g, zero_h = torch.zeros(4, dtype=torch.float64), torch.zeros(4, 4, dtype=torch.float64)
    mean = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64)
    phi, gain = optimal_concentrations(zero_g, zero_h, mean, 0.5, 30.0 * mean, trust=20.0, steps=3000)
    assert torch.allclose(phi, torch.full((4,), 0.5, dtype=torch.float64), rtol=0.02) and gain > 0
    held, _ = optimal_concentrations(zero_g, zero_h, mean, 0.5, 30.0 * mean, trust=1.0, steps=3000)
    assert torch.allclose(held, 30.0 * mean * math.exp(-1.0), rtol=1e-6)  # at the edge of the region
    with pytest.raises(ValueError, match="trust must be positive"):
        optimal_concentrations(zero_g, zero_h, mean, 0.5, mean, trust=0.0)


def test_the_quadratic_settle_lands_where_a_long_full_batch_fit_goes_from_either_start():
    """A short minibatch fit (2 epochs) from init 1 and from init 10, then every concentration set
    to the optimum of the ELBO's expansion: phi_0 and the means land near those of a long
    full-batch fit, from both starts, nearer than the short fits themselves."""
    from pyro_dirichlet_prune import SplitLoader
    from pyro_dirichlet_prune.data import Split

    net, x, y = _problem()
    model = SwitchModel(net, num_data=N)
    ref = DirichletGuide(model, init_concentration=10.0)
    fit(model, ref, [(x, y)], epochs=3000, schedule="joint", seed=0, progress=False)
    want = ref.concentration("fc1").detach().double()
    for init in (1.0, 10.0):
        guide = DirichletGuide(model, init_concentration=init)
        loader = SplitLoader(Split(x, y), 200, True, torch.Generator().manual_seed(0))
        fit(model, guide, loader, epochs=2, schedule="joint", seed=0, progress=False)
        short = guide.concentration("fc1").detach().double()
        out = settle_concentrations(model, guide, [(x, y)], schedule="joint", whole=True)["fc1"]
        got = guide.concentration("fc1").detach().double()
        assert out["phi0"] == pytest.approx(float(got.sum())) and out["surrogate_gain"] > 0
        assert float(got.sum()) == pytest.approx(float(want.sum()), rel=0.1), (init, out)
        gap = float((got / got.sum() - want / want.sum()).abs().max())
        # when written: phi_0 73.3 and 73.2 against 75.9 (the short fits 12.6, 119); means 0.038 and 0.034 off
        # (the short fits' 0.28 and 0.25)
        assert gap < 0.05 and gap < float((short / short.sum() - want / want.sum()).abs().max()) / 4, (init, gap)
    with pytest.raises(ValueError, match="probes: the whole settle"):
        settle_concentrations(model, guide, [(x, y)], whole=True, probes=2)


def test_the_full_data_nll_and_its_gradient_against_sums_and_finite_differences():
    from pyro_dirichlet_prune.inference.concentration import layer_nll

    net, x, y = _problem()
    model = SwitchModel(net, num_data=N)
    mean = torch.linspace(1, 2, 12, dtype=torch.float64)
    mean = mean / mean.sum()
    nll, g = layer_nll(model, "fc1", mean, [(x, y)], gradient=True)
    # every example counts, unscaled, in any minibatching
    parts = [layer_nll(model, "fc1", mean, [(x[a:a + 300], y[a:a + 300])])[0] for a in range(0, N, 300)]
    assert nll == pytest.approx(sum(parts), rel=1e-5)
    assert layer_nll(model, "fc1", mean, [(x, y)], gradient=False)[1] is None
    for j in (0, 5, 11):
        e = torch.zeros(12, dtype=torch.float64)
        e[j] = 1e-3
        fd = (layer_nll(model, "fc1", mean + e, [(x, y)])[0] - layer_nll(model, "fc1", mean - e, [(x, y)])[0]) / 2e-3
        assert float(g[j]) == pytest.approx(fd, rel=1e-2, abs=1e-2 * float(g.abs().max()))


def test_the_quadratic_settle_keeps_the_settled_point_when_its_step_lowers_the_elbo(monkeypatch):
    """The whole settle's Newton step is checked on the whole data: a step the quadratic expansion
    likes but the likelihood does not (here a candidate with its means reversed) is not taken;
    the real step of a short fit is, and raises the data's ELBO."""
    import pyro_dirichlet_prune.inference.concentration as conc

    net, x, y = _problem()
    model = SwitchModel(net, num_data=N)
    guide = DirichletGuide(model, init_concentration=10.0)
    fit(model, guide, [(x, y)], epochs=60, schedule="joint", seed=0, progress=False)
    fitted = guide.concentration("fc1").detach().double().clone()
    real = conc.optimal_concentrations
    monkeypatch.setattr(conc, "optimal_concentrations", lambda g, h, m, a, start, **kw: (start.flip(0), 1e6))
    out = settle_concentrations(model, guide, [(x, y)], schedule="joint", whole=True)["fc1"]
    kept = guide.concentration("fc1").detach().double()
    assert out["step"] == 0.0 and out["elbo_gain"] == 0.0 and out["phi0"] == pytest.approx(out["phi0_settled"])
    assert torch.allclose(kept / kept.sum(), fitted / fitted.sum(), atol=1e-6)  # the fitted means
    monkeypatch.setattr(conc, "optimal_concentrations", real)
    guide.set_concentrations({"fc1": fitted})
    out = settle_concentrations(model, guide, [(x, y)], schedule="joint", whole=True)["fc1"]
    moved = guide.concentration("fc1").detach().double()
    assert out["step"] > 0 and out["elbo_gain"] > 0
    assert float((moved / moved.sum() - fitted / fitted.sum()).abs().max()) > 1e-3


def test_switch_learning_can_end_with_the_quadratic_settle():
    from pyro_dirichlet_prune.data import Split
    from pyro_dirichlet_prune.inference.svi import SwitchConfig, fit_switches, interval_basis
    from pyro_dirichlet_prune.models import SwitchedNetwork

    net, x, y = _problem()
    cfg = SwitchConfig(concentration="quadratic", average=True, batch_size=500, schedule="joint", epochs=2)
    done = fit_switches(SwitchedNetwork(net), Split(x, y), cfg)
    record = done.settled["fc1"]
    phi = done.guide.concentration("fc1").detach()
    assert float(phi.sum()) == pytest.approx(record["phi0"], rel=1e-5) and record["surrogate_gain"] > 0
    assert record["phi0"] != pytest.approx(record["phi0_settled"], rel=1e-3)  # the means moved too
    basis = interval_basis(cfg, done)
    rounds = "+".join(f"{t:g}" for t in record["steps"])
    assert basis.startswith("quadratic: ") and basis.endswith(f"(fraction of the step taken in each round: fc1 {rounds})")
    assert record["steps"][0] == record["step"] and 1 <= len(record["steps"]) <= cfg.settle_rounds == 4
    assert record["step"] > 0 and record["elbo_gain"] > 0
    with pytest.raises(ValueError, match="curvature_probes: concentration='quadratic' needs the exact Hessian"):
        SwitchConfig(concentration="quadratic", curvature_probes=4).validate()
    with pytest.raises(ValueError, match="concentration='quadratic' needs guide 'dirichlet' or 'dirichlet-mean'"):
        SwitchConfig(concentration="quadratic", guide="delta").validate()


@pytest.mark.default_recipe
def test_auto_concentration_is_the_quadratic_settle_where_it_applies(monkeypatch):
    """The default ``auto``: the quadratic settle for the Dirichlet guides on frozen weights where
    its exact Hessian is affordable (LeNet-5, not a VGG-16); the guides and models it cannot
    settle keep their fitted parameters, still validate, and their intervals say so."""
    from pyro_dirichlet_prune.data import Split
    from pyro_dirichlet_prune.inference.svi import AUTO_QUADRATIC_COST, SwitchConfig, fit_switches, interval_basis
    from pyro_dirichlet_prune.models import SwitchedNetwork

    assert SwitchConfig().resolved_concentration() == "quadratic"
    assert SwitchConfig().resolved_concentration(units=155, macs=498_750) == "quadratic"  # LeNet-5
    assert SwitchConfig().resolved_concentration(units=1056, macs=20_000_000) == "fitted"  # a VGG-16 x0.25
    net, x, y = _problem()
    small = fit_switches(SwitchedNetwork(net), Split(x, y), SwitchConfig(batch_size=500, schedule="joint", epochs=1))
    assert small.concentration == "quadratic" and small.settled is not None
    assert interval_basis(SwitchConfig(), small).startswith("quadratic: ")
    import pyro_dirichlet_prune.inference.svi as svi

    assert AUTO_QUADRATIC_COST > 0
    monkeypatch.setattr(svi, "AUTO_QUADRATIC_COST", 0.0)  # the same problem priced above the threshold
    big = fit_switches(SwitchedNetwork(net), Split(x, y), SwitchConfig(batch_size=500, schedule="joint", epochs=1))
    assert big.concentration == "fitted" and big.settled is None
    assert interval_basis(SwitchConfig(), big).startswith("as fitted, not converged")
    assert SwitchConfig(guide="dirichlet-mean").resolved_concentration() == "quadratic"
    for other in (SwitchConfig(guide="normal"), SwitchConfig(guide="delta"),
                  SwitchConfig(weight_scale=0.05, schedule="joint"), SwitchConfig(curvature_probes=4)):
        other.validate()
        assert other.resolved_concentration() == "fitted"
    assert SwitchConfig(concentration="settled").resolved_concentration() == "settled"
    with pytest.raises(ValueError, match="concentration='quadratic' needs guide 'dirichlet'"):
        SwitchConfig(concentration="quadratic", guide="normal").validate()


def test_more_settle_rounds_climb_further():
    """rounds > 1 repeats the checked Newton step from where the last one landed: its first round
    is the single step's and the whole data's ELBO gains at least as much."""
    from pyro_dirichlet_prune import SplitLoader
    from pyro_dirichlet_prune.data import Split

    net, x, y = _problem()
    model = SwitchModel(net, num_data=N)
    guide = DirichletGuide(model, init_concentration=1.0)
    fit(model, guide, SplitLoader(Split(x, y), 200, True, torch.Generator().manual_seed(0)), epochs=1,
        schedule="joint", seed=0, progress=False)
    fitted = guide.concentration("fc1").detach().clone()
    once = settle_concentrations(model, guide, [(x, y)], schedule="joint", whole=True)["fc1"]
    guide.set_concentrations({"fc1": fitted})
    more = settle_concentrations(model, guide, [(x, y)], schedule="joint", whole=True, rounds=6)["fc1"]
    assert more["steps"][0] == once["step"] == once["steps"][0] and once["step"] > 0
    assert len(more["steps"]) >= 2, more["steps"]
    assert more["elbo_gain"] >= once["elbo_gain"] and more["phi0"] != pytest.approx(once["phi0"], rel=1e-9)
    with pytest.raises(ValueError, match="rounds must be a positive int"):
        settle_concentrations(model, guide, [(x, y)], whole=True, rounds=0)
    from pyro_dirichlet_prune.inference.svi import SwitchConfig
    with pytest.raises(ValueError, match="settle_rounds must be a positive int"):
        SwitchConfig(settle_rounds=0).validate()


def test_the_rounds_end_at_the_first_that_takes_no_step_or_gains_under_a_nat(monkeypatch):
    import pyro_dirichlet_prune.inference.concentration as conc

    net, x, y = _problem()
    model = SwitchModel(net, num_data=N)
    guide = DirichletGuide(model, init_concentration=10.0)
    start = guide.concentration("fc1").detach().clone()
    for verdicts, want in (([(1.0, 5.0)] * 6, [1.0] * 6), ([(1.0, 5.0), (0.25, 0.5), (1.0, 5.0)], [1.0, 0.25]),
                           ([(0.25, 3.0), (0.0, 0.0), (1.0, 5.0)], [0.25, 0.0])):
        seen = iter(verdicts)

        def fake(model, layer, data, others, h, settled, nll, step, floor=0.0, seen=seen):
            t, gain = next(seen)
            return settled * (1 + 0.01 * t), t, gain

        monkeypatch.setattr(conc, "checked_step", fake)
        guide.set_concentrations({"fc1": start})
        out = settle_concentrations(model, guide, [(x, y)], schedule="joint", whole=True, rounds=6)["fc1"]
        assert out["steps"] == want and out["step"] == want[0]
