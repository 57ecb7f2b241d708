"""The fine-tuning budget earned on the validation split: ``schedule="plateau"``
(``finetune_budget.PlateauSchedule``), by hand-worked cases and through ``finetune``."""
from __future__ import annotations

import pytest
import torch

from pyro_dirichlet_prune import evaluate, finetune
from pyro_dirichlet_prune.finetune_budget import EpochRecord, PlateauSchedule
from pyro_dirichlet_prune.loop import LoopEvent
from pyro_dirichlet_prune.models import build_model
from pyro_dirichlet_prune.training import TrainConfig


def _scripted(errors: list[float], **kwargs) -> tuple[list[float], int | None, list[int]]:
    """Drive a ``PlateauSchedule`` with a scripted validation error per epoch: the rate each epoch
    ran at, the epoch it ended the run at (None: never), and the best epoch after each epoch."""
    script = iter(errors)
    net = torch.nn.Linear(2, 2)
    opt = torch.optim.Adam(net.parameters(), lr=1.0)
    record = EpochRecord(net, val_data=[None], validate=lambda n, v: {"error": next(script)})
    rule = PlateauSchedule(record, opt, **kwargs)
    stop, best = None, []
    for epoch in range(len(errors)):
        event = LoopEvent(epoch, epoch + 1, 0.0, True)
        record.on_epoch_end(event)
        best.append(record.result.best_epoch)
        if rule.on_epoch_end(event):
            stop = epoch + 1
            break
    return [r["lr"] for r in record.result.history], stop, best


def test_the_rate_is_cut_after_patience_epochs_without_progress_and_the_run_ends_after_the_last_cut():
    # best at 2; 3, 4 without progress: cut at 4. Best at 5; 6, 7 without: cut at 7. 8, 9 without: end at 9.
    lrs, stop, best = _scripted([5, 4, 4, 4, 3, 3, 3, 3, 3, 3, 3], patience=2, factor=0.1, cuts=2)
    assert stop == 9
    assert lrs == pytest.approx([1, 1, 1, 1, 0.1, 0.1, 0.1, 0.01, 0.01])
    assert best[-1] == 5


def test_progress_after_a_cut_restarts_the_count_and_min_epochs_holds_the_end_back():
    # patience 1, one cut: epoch 2 no progress -> cut; 3 improves; 4 no progress -> end at 4 ...
    lrs, stop, _ = _scripted([3, 3, 2, 2, 2, 2, 2], patience=1, factor=0.5, cuts=1)
    assert (stop, lrs) == (4, pytest.approx([1, 1, 0.5, 0.5]))
    # ... unless 6 epochs must run
    lrs, stop, _ = _scripted([3, 3, 2, 2, 2, 2, 2], patience=1, factor=0.5, cuts=1, min_epochs=6)
    assert (stop, lrs) == (6, pytest.approx([1, 1, 0.5, 0.5, 0.5, 0.5]))
    # no cuts at all: early stopping at a constant rate
    lrs, stop, _ = _scripted([3, 2, 2, 2, 1], patience=2, cuts=0)
    assert (stop, lrs) == (4, pytest.approx([1, 1, 1, 1]))


def _data(n: int, seed: int):
    """Minibatches of 32 noise images labelled by their brightest quadrant: learnable, slowly."""
    x = torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))
    y = torch.stack([x[:, 0, :14, :14], x[:, 0, :14, 14:], x[:, 0, 14:, :14], x[:, 0, 14:, 14:]], 1).mean((2, 3)).argmax(1)
    return [(x[i:i + 32], y[i:i + 32]) for i in range(0, n, 32)]


PLATEAU = {"lr": 0.01, "schedule": "plateau", "patience": 2, "plateau_factor": 0.2, "plateau_cuts": 2}


def test_finetune_on_the_plateau_schedule_steps_at_the_held_rates_and_keeps_the_best_epoch(adam_rates):
    train, val = _data(512, 0), _data(256, 1)
    seen = adam_rates
    torch.manual_seed(0)
    net = build_model("lenet5", widths=(3, 4, 5, 2))
    result = finetune(net, train, val, epochs=30, progress=False, **PLATEAU)
    n = len(result.history)
    assert len(seen) == 16 * n  # sixteen minibatches an epoch
    per_epoch = [seen[16 * e:16 * e + 16] for e in range(n)]
    assert all(len(set(rates)) == 1 for rates in per_epoch)  # held within an epoch
    rates = [r[0] for r in per_epoch]
    assert rates == [r["lr"] for r in result.history]
    assert sorted(set(rates), reverse=True) == pytest.approx([0.01, 0.002, 0.0004])
    errors = [r["val_error"] for r in result.history]
    assert result.stopped_early and n < 30  # the rule ended it, after its last cut and two epochs without progress
    assert min(errors[-2:]) >= min(errors) and rates[-1] == rates[-2] == pytest.approx(0.0004)
    assert min(errors) < errors[0]  # it learned something, after a cut too
    assert result.best_epoch == errors.index(min(errors)) + 1 and rates[result.best_epoch - 1] < 0.01
    assert evaluate(net, val)["error"] == pytest.approx(min(errors))


def test_a_killed_plateau_fine_tuning_resumes_to_the_same_network(tmp_path):
    train, val = _data(512, 0), _data(256, 1)

    class Killed(Exception):
        pass

    def run(folder, kill_at=None):
        torch.manual_seed(0)
        net = build_model("lenet5", widths=(3, 4, 5, 2))
        count = []

        def killer(info):
            count.append(1)
            if len(count) == kill_at:
                raise Killed

        result = finetune(net, train, val, epochs=30, progress=False, checkpoint=folder, checkpoint_every=5,
                          callback=killer, **PLATEAU)
        return net, result

    ref, ref_result = run(tmp_path / "ref")
    assert ref_result.history[-2]["lr"] < 0.01  # cuts happened before the kill point's epoch
    with pytest.raises(Killed):
        run(tmp_path / "run", kill_at=16 * len(ref_result.history) - 9)  # in the last epoch
    resumed, result = run(tmp_path / "run")
    assert result.history == ref_result.history and result.best_epoch == ref_result.best_epoch
    for a, b in zip(resumed.state_dict().values(), ref.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_plateau_needs_validation_data_and_sane_settings():
    train = _data(32, 0)
    with pytest.raises(ValueError, match="schedule: the plateau schedule watches the validation error"):
        finetune(build_model("lenet5", widths=(3, 4, 5, 2)), train, None, epochs=2, schedule="plateau")
    for field, bad, msg in (("plateau_factor", 1.0, "plateau_factor must be in \\(0, 1\\)"),
                            ("plateau_cuts", -1, "plateau_cuts must be a non-negative int")):
        with pytest.raises(ValueError, match=msg):
            TrainConfig(schedule="plateau", **{field: bad}).validate()
