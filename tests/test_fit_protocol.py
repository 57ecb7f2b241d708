"""``fit`` as a user watches and steers it (callbacks, progress in a log), ``estimate_elbo``'s
seed, and the autoguide protocol (``quantiles``, ``median``) of ``DirichletGuide``."""
from __future__ import annotations

import pyro
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from pyro_dirichlet_prune import DirichletGuide, FitStep, SwitchModel, estimate_elbo, evaluate, finetune, fit
from pyro_dirichlet_prune.loop import LoopCallback
from pyro_dirichlet_prune.training import TrainStep
from pyro_dirichlet_prune.models import build_model

N = 64


def _setup():
    g = torch.Generator().manual_seed(0)
    net = build_model("lenet5", widths=(3, 4, 5, 2)).eval()
    with torch.no_grad():
        net.fc3.weight.mul_(20.0)
    x = torch.randn(N, 1, 28, 28, generator=g)
    y = net(x).argmax(1)
    return net, [(x[i:i + 16], y[i:i + 16]) for i in range(0, N, 16)]  # 4 minibatches an epoch


def test_callbacks_see_every_step_and_can_end_a_stage():
    net, data = _setup()
    model = SwitchModel(net, num_data=N)
    seen: list[FitStep] = []

    def stop_after_six(info: FitStep) -> bool:
        seen.append(info)
        return info.step == 6

    result = fit(model, DirichletGuide(model), data, epochs=3, schedule="sequential", seed=0, progress=False,
                 callback=[stop_after_six])
    assert [s["steps"] for s in result.stages] == [6] * 4 and all(s["stopped"] for s in result.stages)
    assert len(result.losses) == 24 and [i.loss for i in seen] == result.losses
    assert [(i.stage, i.epoch, i.step, i.epoch_end) for i in seen[:6]] == [
        (0, 0, 1, False), (0, 0, 2, False), (0, 0, 3, False), (0, 0, 4, True), (0, 1, 5, False), (0, 1, 6, False)]
    assert [i.layers for i in seen[::6]] == [[layer] for layer in model.layers]
    assert list(result.stage_losses()) == model.layers and result.final_loss(2) == pytest.approx(
        sum(result.losses[-2:]) / 2)

    whole = fit(model, DirichletGuide(model), data, epochs=2, schedule="joint", seed=0, progress=False,
                callback=lambda info: None)
    assert whole.stages[0]["steps"] == 8 and whole.stages[0]["epochs"] == 2 and not whole.stages[0]["stopped"]
    with pytest.raises(TypeError, match="callback must be a callable or a list of callables, got 3"):
        fit(model, DirichletGuide(model), data, progress=False, callback=3)


def test_progress_writes_a_line_per_epoch_when_stderr_is_not_a_terminal(capsys):
    net, data = _setup()
    model = SwitchModel(net, num_data=N)
    fit(model, DirichletGuide(model), data, epochs=2, schedule="joint", seed=0)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("switches conv1+conv2+fc1+fc2: epoch 1/2, 4 steps, loss ")
    assert lines[1].startswith("switches conv1+conv2+fc1+fc2: epoch 2/2, 8 steps, loss ")
    fit(model, DirichletGuide(model), data, seed=0, progress=False)
    assert capsys.readouterr().err == ""


def test_fit_and_finetune_share_one_loop_with_epoch_callbacks(capsys):
    """A ``LoopCallback`` hears every epoch end of a fit's stage and of fine-tuning; fine-tuning
    stopped by one after its second epoch keeps the best of those two epochs, and says each
    epoch in a line on stderr (no terminal)."""
    net, data = _setup()
    model = SwitchModel(net, num_data=N)

    class Ends(LoopCallback):
        def __init__(self):
            self.ends = []

        def on_epoch_end(self, event):
            self.ends.append((event.epoch, event.step, event.epoch_end))

    ends = Ends()
    fit(model, DirichletGuide(model), data, epochs=2, schedule="sequential", seed=0, progress=False, callback=ends)
    assert ends.ends == [(0, 4, True), (1, 8, True)] * 4

    class StopAtTwo(Ends):
        def on_epoch_end(self, event):
            super().on_epoch_end(event)
            assert isinstance(event, TrainStep) and len(event.result.history) == event.epoch + 1
            return event.epoch == 1

    small = build_model("lenet5", widths=(3, 4, 5, 2))
    stop = StopAtTwo()
    torch.manual_seed(0)
    result = finetune(small, data, data, epochs=5, callback=stop)
    assert stop.ends == [(0, 4, True), (1, 8, True)]
    assert [r["epoch"] for r in result.history] == [1, 2]
    errors = [r["val_error"] for r in result.history]
    assert result.best_epoch == 1 + errors.index(min(errors))
    assert evaluate(small, data)["error"] == pytest.approx(min(errors))
    lines = capsys.readouterr().err.strip().splitlines()
    assert [line.split(",")[0] for line in lines] == ["fine-tune: epoch 1/5", "fine-tune: epoch 2/5"]
    assert "train loss" in lines[0] and "val error" in lines[0]


def test_estimate_elbo_with_a_seed_is_one_number_and_leaves_the_generators_alone():
    net, data = _setup()
    model = SwitchModel(net, num_data=N)
    guide = DirichletGuide(model)
    x, y = torch.cat([b[0] for b in data]), torch.cat([b[1] for b in data])
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    pyro.set_rng_seed(123)
    state = torch.get_rng_state()
    first = estimate_elbo(model, guide, loader, num_particles=2, seed=0)
    assert torch.equal(torch.get_rng_state(), state)
    assert estimate_elbo(model, guide, loader, num_particles=2, seed=0) == first
    assert estimate_elbo(model, guide, loader, num_particles=2, seed=1) != first


def test_dirichlet_guide_quantiles_and_median_are_the_exact_beta_marginals():
    net, _ = _setup()
    model = SwitchModel(net, num_data=N)
    guide = DirichletGuide(model)
    g = torch.Generator().manual_seed(1)
    phis = {k: torch.rand(d, generator=g, dtype=torch.float64) * 4 + 0.3 for k, d in model.widths.items()}
    guide.set_concentrations(phis)
    levels = [0.025, 0.5, 0.975]
    q = guide.quantiles(levels)
    assert set(q) == {f"switch.{k}" for k in model.layers}  # keyed by site, as an autoguide's are
    torch.manual_seed(0)
    for layer, phi in phis.items():
        draws = torch.distributions.Dirichlet(phi).sample((200_000,))
        empirical = torch.quantile(draws[:, :], torch.tensor(levels, dtype=torch.float64), dim=0)
        torch.testing.assert_close(q[f"switch.{layer}"], empirical, atol=4e-3, rtol=0)
        torch.testing.assert_close(guide.median()[f"switch.{layer}"], q[f"switch.{layer}"][1])
    with pytest.raises(ValueError, match=r"quantiles must be levels in \(0, 1\), got \[0.5, 1.0\]"):
        guide.quantiles([0.5, 1.0])


def test_fit_defaults_to_the_papers_schedule_as_the_config_and_the_command_line_do():
    from pyro_dirichlet_prune.cli import build_parser
    from pyro_dirichlet_prune.cli.options import switch_config
    from pyro_dirichlet_prune.inference.svi import SwitchConfig

    net, data = _setup()
    model = SwitchModel(net, num_data=N)
    result = fit(model, DirichletGuide(model), data, seed=0, progress=False)
    assert [s["layers"] for s in result.stages] == [[layer] for layer in model.layers]
    cli = switch_config(build_parser().parse_args(["prune", "--out", "x"]))
    assert SwitchConfig().schedule == cli.schedule == "sequential"
    assert cli == SwitchConfig()  # every switch option defaults to the library's value
    given = switch_config(build_parser().parse_args(
        ["prune", "--out", "x", "--switch-lr-decay", "0.75", "--switch-average", "--concentration", "settled",
         "--curvature-examples", "500", "--curvature-probes", "3"]))
    assert (given.lr_decay, given.average, given.concentration, given.curvature_examples, given.curvature_probes) == (
        0.75, True, "settled", 500, 3)
    for bad in ({"lr_decay": 1.5}, {"curvature_examples": 0}, {"curvature_probes": 0}):
        with pytest.raises(ValueError, match=f"{next(iter(bad))} must be"):
            SwitchConfig(**bad).validate()
    learned = SwitchModel(net, num_data=N, scale="dim", weight_scale=0.05)
    with pytest.raises(ValueError, match="schedule: a model with learned weights .* needs schedule='joint'"):
        fit(learned, DirichletGuide(learned), data, progress=False)


def test_pyro_validation_runs_on_the_first_step_of_a_stage_and_keeps_the_callers_setting(monkeypatch):
    """fit validates each stage's first step (a wrong guide shows itself there) and skips Pyro's
    checks afterwards; a caller who switched validation off keeps it off, before and after."""
    import pyro.infer.util

    from pyro_dirichlet_prune.inference import fit as fit_module

    net, data = _setup()
    model = SwitchModel(net, num_data=N)
    seen = []
    real_step = fit_module._step

    def spy(*args, validate=True):
        seen.append(validate)
        return real_step(*args, validate=validate)

    monkeypatch.setattr(fit_module, "_step", spy)
    fit(model, DirichletGuide(model), data, epochs=2, seed=0, progress=False)
    assert seen == ([True] + [False] * 7) * 4  # 4 stages of 2 epochs of 4 minibatches
    assert pyro.infer.util.is_validation_enabled()
    with pyro.validation_enabled(False):
        fit(model, DirichletGuide(model), data, seed=0, progress=False)
        assert not pyro.infer.util.is_validation_enabled()


def _best_so_far(errors: list[float]) -> list[int]:
    """The epoch kept (from 1, the first lowest) after each epoch."""
    best, out = 0, []
    for e, err in enumerate(errors, start=1):
        if best == 0 or err < errors[best - 1]:
            best = e
        out.append(best)
    return out


@pytest.mark.parametrize("patience,min_epochs", [(1, 0), (2, 0), (2, 6)])
def test_early_stopping_ends_fine_tuning_at_the_first_epoch_without_progress(patience, min_epochs):
    net, data = _setup()
    g = torch.Generator().manual_seed(1)
    val = [(torch.randn(64, 1, 28, 28, generator=g), torch.randint(0, 10, (64,), generator=g))]  # unlearnable
    small = build_model("lenet5", widths=(3, 4, 5, 2))
    torch.manual_seed(0)
    result = finetune(small, data, val, epochs=12, lr=0.05, patience=patience, min_epochs=min_epochs, progress=False)
    errors = [r["val_error"] for r in result.history]
    best = _best_so_far(errors)
    n = len(errors)
    # it ran until the first epoch (at least min_epochs) that is `patience` epochs past the best so far
    should_stop = [e for e in range(1, 13) if e >= min_epochs and e <= n and e - best[e - 1] >= patience]
    assert result.stopped_early == (n < 12 or bool(should_stop and should_stop[0] == 12))
    assert (should_stop[0] if should_stop else 12) == n
    assert result.best_epoch == best[-1] and n >= min_epochs
    assert evaluate(small, val)["error"] == pytest.approx(min(errors))


def test_early_stopping_needs_validation_data_and_a_positive_patience():
    net, data = _setup()
    with pytest.raises(ValueError, match="patience: early stopping watches the validation error; give val_data"):
        finetune(build_model("lenet5", widths=(3, 4, 5, 2)), data, None, epochs=2, patience=2)
    with pytest.raises(ValueError, match="patience must be a positive int or None, got 0"):
        finetune(build_model("lenet5", widths=(3, 4, 5, 2)), data, data, epochs=2, patience=0)


def test_a_decaying_step_follows_robbins_monro_in_every_stage_and_resumes_exactly(tmp_path, monkeypatch, adam_rates):
    """``lr_decay``: step t of a stage at lr (1 + t/T)^-decay, T one epoch; the schedule restarts
    each stage, and a fit killed mid-stage and resumed from its checkpoint ends where an
    uninterrupted one does."""
    net, data = _setup()
    seen = adam_rates
    model = SwitchModel(net, num_data=N)
    fit(model, DirichletGuide(model), data, epochs=2, lr=0.1, lr_decay=0.75, seed=0, progress=False)
    want = [0.1 * (1 + t / 4) ** -0.75 for t in range(8)]
    assert seen == pytest.approx(want * 4, rel=1e-12)
    monkeypatch.undo()

    class Killed(Exception):
        pass

    def run(folder, kill_at=None):
        model = SwitchModel(net, num_data=N)
        guide = DirichletGuide(model)
        count = []

        def killer(info):
            count.append(1)
            if len(count) == kill_at:
                raise Killed

        fit(model, guide, data, epochs=3, lr=0.1, lr_decay=1.0, seed=0, progress=False, checkpoint=folder,
            checkpoint_every=3, callback=killer)
        return guide.concentrations()

    ref = run(tmp_path / "ref")
    with pytest.raises(Killed):
        run(tmp_path / "run", kill_at=17)  # in the second stage, after its fifth step
    resumed = run(tmp_path / "run")
    for layer in ref:
        torch.testing.assert_close(resumed[layer], ref[layer], rtol=0, atol=0)
    for bad in (-0.1, 1.5, True):
        with pytest.raises(ValueError, match="lr_decay must be a number in \\[0, 1\\]"):
            fit(model, DirichletGuide(model), data, lr_decay=bad, progress=False)
    with pytest.raises(ValueError, match="lr_decay: the decay's time scale is one epoch, len\\(data\\)"):
        fit(model, DirichletGuide(model), iter(data), lr_decay=1.0, progress=False)


def test_a_decaying_step_stills_the_iterates_that_a_constant_one_keeps_jittering():
    """The remedy docs/convergence.md names: under a constant step the means wander for ever;
    with lr_decay=1 their epoch-to-epoch movement over the last epochs is several times smaller."""
    net, data = _setup()
    movement = {}
    for decay in (0.0, 1.0):
        model = SwitchModel(net, num_data=N)
        guide = DirichletGuide(model)
        means = []

        def record(info, guide=guide, means=means):
            if info.epoch_end:
                phi = guide.concentration("conv2").detach()
                means.append(phi / phi.sum())

        fit(model, guide, data, epochs=60, schedule="joint", lr=0.1, lr_decay=decay, seed=0, progress=False,
            callback=record)
        movement[decay] = float(torch.stack([(a - b).abs().max() for a, b in zip(means[40:], means[41:])]).mean())
    assert movement[1.0] < movement[0.0] / 3, movement


def test_iterate_averaging_ends_each_stage_at_its_last_epochs_mean():
    """IterateAverage: after a stage the guide holds the mean of its (unconstrained) parameters
    over the stage's last epoch, recorded here step by step; a stage ended after one step averages
    that one iterate, i.e. keeps it."""
    from pyro_dirichlet_prune.inference.averaging import IterateAverage

    net, data = _setup()
    model = SwitchModel(net, num_data=N)
    guide = DirichletGuide(model)
    seen: dict[int, list] = {}

    def record(info):  # told before the average (listed first), after every step
        seen.setdefault(info.stage, []).append({k: p.detach().clone() for k, p in guide.named_parameters()})

    average = IterateAverage(guide)
    fit(model, guide, data, epochs=3, lr=0.1, seed=0, progress=False, callback=[record, average])
    assert average.stages_averaged == 4
    for stage, layer in enumerate(model.layers):
        name = next(k for k in seen[stage][0] if layer in k)
        last_epoch = torch.stack([s[name] for s in seen[stage][-4:]])  # 4 steps an epoch
        torch.testing.assert_close(dict(guide.named_parameters())[name].detach(), last_epoch.mean(0))
        assert not torch.allclose(last_epoch.mean(0), seen[stage][-1][name])  # not the last iterate

    short = IterateAverage(guide)
    before = {k: p.detach().clone() for k, p in guide.named_parameters()}
    fit(model, guide, data[:2], epochs=1, schedule="joint", lr=0.1, seed=0, progress=False,
        callback=lambda info: info.step == 1)  # stopped after one step, inside its first epoch
    after_plain = {k: p.detach().clone() for k, p in guide.named_parameters()}
    for k in before:
        p = dict(guide.named_parameters())[k]
        with torch.no_grad():
            p.copy_(before[k])
    fit(model, guide, data[:2], epochs=1, schedule="joint", lr=0.1, seed=0, progress=False,
        callback=[lambda info: info.step == 1, short])
    assert short.stages_averaged == 1
    for k, p in guide.named_parameters():
        torch.testing.assert_close(p.detach(), after_plain[k])
    with pytest.raises(TypeError, match="guide must be a torch.nn.Module"):
        IterateAverage(object())
