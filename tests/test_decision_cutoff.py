"""The decision cut-off (``pruning.decision``): on problems whose optimum is known in closed form
it finds it; on a network its log-likelihood is that of the pruned network, and the network is
left as it was; the command line's options select it and refuse conflicts."""
from __future__ import annotations

import copy
import itertools
import json

import pytest
import torch
import torch.nn.functional as F

from helpers import tiny_lenet
from pyro_dirichlet_prune import cli
from pyro_dirichlet_prune.data import Split
from pyro_dirichlet_prune.inference.svi import SwitchConfig, fit_switches
from pyro_dirichlet_prune.models import SwitchedNetwork, build_model, switch_points
from pyro_dirichlet_prune.models.checkpoint import save_checkpoint
from pyro_dirichlet_prune.pruning.decision import decision_cutoff, decision_keep, elimination_order
from pyro_dirichlet_prune.pruning.surgery import prune
from pyro_dirichlet_prune.pruning.cutoffs import relative_draws

WIDTHS = {"a": 4, "b": 5, "c": 3}
PER_UNIT = {"a": 30, "b": 10, "c": 2}  # MACs a unit of each layer costs


def _additive(costs: dict[tuple[str, int], float]):
    """A log-likelihood that loses ``costs[u]`` for every removed unit u, and a size linear in the
    counts: the utility is separable, so the best keep-set is known exactly."""
    def loglik(keep):
        return -sum(c for (layer, j), c in costs.items() if j not in keep[layer])

    def size(counts):
        macs = sum(PER_UNIT[layer] * k for layer, k in counts.items())
        return {"macs": macs, "params": 2 * macs}

    return loglik, size


@pytest.mark.parametrize("lam", [0.0, 0.3, 1.0, 3.0])
def test_separable_utility_is_maximised_exactly(lam):
    g = torch.Generator().manual_seed(1)
    costs = {(layer, j): float(torch.rand((), generator=g)) * 0.2 for layer, d in WIDTHS.items() for j in range(d)}
    loglik, size = _additive(costs)
    full = size(WIDTHS)["macs"]
    decision = decision_keep(loglik, WIDTHS, size, lam=lam, measure="macs")
    # remove u exactly when its cost is below the utility of the size it saves, a layer keeping one
    expected = {}
    for layer, d in WIDTHS.items():
        kept = [j for j in range(d) if costs[(layer, j)] >= lam * PER_UNIT[layer] / full]
        expected[layer] = kept or [max(range(d), key=lambda j: costs[(layer, j)])]
    assert decision.keep == expected
    assert decision.utility == pytest.approx(loglik(expected) - lam * size({k: len(v) for k, v in expected.items()})["macs"] / full)


def test_elimination_order_of_a_separable_loss_is_by_cost_and_lazy():
    """Each layer alone: the unit losing the least goes first, exactly; the lazy evaluation needs
    fewer log-likelihoods than the D + (D-1) + ... of plain greedy elimination."""
    g = torch.Generator().manual_seed(3)
    widths = {"a": 4, "b": 9, "c": 1}
    costs = {(layer, j): float(torch.rand((), generator=g)) for layer, d in widths.items() for j in range(d)}
    loglik, _ = _additive(costs)
    orders, evaluations = elimination_order(loglik, widths)
    assert orders == {layer: sorted(range(d), key=lambda j: costs[(layer, j)]) for layer, d in widths.items()}
    assert evaluations < sum(d * (d + 1) // 2 for d in widths.values())


def test_greedy_ranking_first_removes_the_unit_that_loses_least_on_a_network():
    """On a small LeNet the greedy ranking gives each layer a permutation of 0..D-1 whose lowest
    score is the unit whose removal alone costs the least log-likelihood of the examples drawn
    with the seed (the first greedy step, exact; the later ones are lazily evaluated, as in
    ``decision_keep``, and may differ from plain greedy where removals help one another)."""
    from pyro_dirichlet_prune.pruning.decision import decision_examples, loglik_function
    from pyro_dirichlet_prune.pruning.ranking import get_ranking

    torch.manual_seed(5)
    net = build_model("lenet5", widths=(5, 6, 8, 5))
    for p in net.parameters():
        p.data.mul_(3.0)
    net.eval()
    train = Split(torch.randn(300, 1, 28, 28), torch.randint(0, 10, (300,)))
    ranking = get_ranking("greedy", greedy_examples=200)
    scores = ranking(net, None, train, seed=4)
    xs, ys = decision_examples(train, 200, 4)
    switched = SwitchedNetwork(net, switch_points(net))
    loglik = loglik_function(switched, switched.points, xs, ys)
    whole = {p.name: list(range(p.width)) for p in switched.points}
    for layer, d in switched.widths.items():
        assert sorted(scores[layer].tolist()) == list(range(d))
        alone = [loglik({**whole, layer: [i for i in range(d) if i != j]}) for j in range(d)]
        assert int(scores[layer].argmin()) == max(range(d), key=alone.__getitem__), layer
    assert ranking.details["greedy_examples"] == 200
    assert ranking.details["evaluations"] < sum(d * (d + 1) // 2 for d in switched.widths.values())


@pytest.mark.parametrize("budget", [120, 97, 60])
def test_budget_removes_the_cheapest_loss_per_mac_then_fills_the_slack(budget):
    g = torch.Generator().manual_seed(2)
    costs = {(layer, j): float(torch.rand((), generator=g)) for layer, d in WIDTHS.items() for j in range(d)}
    loglik, size = _additive(costs)
    decision = decision_keep(loglik, WIDTHS, size, target={"macs": budget}, measure="macs")
    counts = {k: len(v) for k, v in decision.keep.items()}
    assert size(counts)["macs"] <= budget
    removed = [tuple(step["removed"]) for step in decision.steps if "removed" in step]
    ratios = [costs[u] / PER_UNIT[u[0]] for u in removed]
    assert ratios == sorted(ratios)  # removal by loss per MAC saved (each unit's score is fixed here)
    added = [tuple(step["added"]) for step in decision.steps if "added" in step]
    assert set(added) <= set(removed)
    # nothing more fits: every unit left out would break the budget
    for layer, d in WIDTHS.items():
        for j in set(range(d)) - set(decision.keep[layer]):
            more = dict(counts)
            more[layer] += 1
            assert size(more)["macs"] > budget, (layer, j)
    assert decision.loglik == pytest.approx(loglik(decision.keep))


def test_budget_that_cannot_be_met_is_refused():
    loglik, size = _additive({(layer, j): 0.1 for layer, d in WIDTHS.items() for j in range(d)})
    with pytest.raises(ValueError, match="cannot be met"):
        decision_keep(loglik, WIDTHS, size, target={"macs": 10})


@pytest.mark.parametrize("kw,match", [({}, "lam"), ({"lam": 1.0, "target": {"macs": 5}}, "lam"),
                                      ({"lam": -1.0}, "lam"), ({"lam": 1.0, "measure": "flops"}, "measure")])
def test_bad_arguments_are_named(kw, match):
    loglik, size = _additive({})
    with pytest.raises(ValueError, match=match):
        decision_keep(loglik, WIDTHS, size, **kw)


def test_small_problem_matches_brute_force_on_a_network():
    """On a network of 2-3-4-2 units (2^11 keep-sets with a unit per layer) the greedy's keep-set
    scores within the best exhaustive utility's reach, and its log-likelihood is the pruned
    network's own."""
    net, x, y = tiny_lenet(64)
    pts = switch_points(net)
    shape = (1, 28, 28)
    before = copy.deepcopy(net.state_dict())
    lam = 0.5
    decision = decision_cutoff(net, pts, x, y, shape, lam=lam, measure="macs")
    assert all(torch.equal(net.state_dict()[k], before[k]) for k in before)
    small = prune(net, decision.keep, shape)
    with torch.no_grad():
        own = float(F.log_softmax(small(x), 1).gather(1, y[:, None]).mean())
    assert decision.loglik == pytest.approx(own, abs=1e-5)

    from pyro_dirichlet_prune.metrics import count_macs
    full = count_macs(net, shape)
    best = -float("inf")
    widths = {p.name: p.width for p in pts}
    subsets = {layer: [c for r in range(1, d + 1) for c in itertools.combinations(range(d), r)]
               for layer, d in widths.items()}
    sw = SwitchedNetwork(copy.deepcopy(net))
    macs_of = {}
    for combo in itertools.product(*subsets.values()):
        keep = dict(zip(widths, combo))
        counts = tuple(len(v) for v in combo)
        if counts not in macs_of:
            macs_of[counts] = count_macs(prune(net, {k: range(len(v)) for k, v in keep.items()}, shape, verify=False), shape)
        masks = {k: torch.zeros(widths[k]).index_fill_(0, torch.tensor(v), 1.0) for k, v in keep.items()}
        with torch.no_grad(), sw.scaled(masks):
            ll = float(F.log_softmax(sw(x), 1).gather(1, y[:, None]).mean())
        best = max(best, ll - lam * macs_of[counts] / full)
    assert decision.utility <= best + 1e-9
    assert decision.utility >= best - 0.05, (decision.utility, best)


def test_relative_draws_average_to_one_and_are_none_for_a_frozen_fit():
    net, x, y = tiny_lenet(8)
    train = Split(x.repeat(4, 1, 1, 1), y.repeat(4))
    learned = fit_switches(SwitchedNetwork(copy.deepcopy(net)), train,
                           SwitchConfig(scale="dim", schedule="joint", weight_scale=0.05, batch_size=8, seed=0))
    draws = relative_draws(learned, 4000, seed=0)
    mean = {k: torch.stack([d[k] for d in draws]).mean(0) for k in draws[0]}
    for layer, m in mean.items():
        phi = learned.concentrations[layer]
        var = (phi.sum() - phi) / (phi * (phi.sum() + 1))  # Var[s_j / E s_j] of a Dirichlet
        assert torch.all((m - 1).abs() < 5 * (var / 4000).sqrt()), layer
    assert relative_draws(learned, 2, seed=0)[0]["conv1"].tolist() == relative_draws(learned, 2, seed=0)[0]["conv1"].tolist()
    frozen = fit_switches(SwitchedNetwork(copy.deepcopy(net)), train, SwitchConfig(batch_size=8, seed=0))
    assert relative_draws(frozen, 3, seed=0) == []


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp("dec")
    torch.manual_seed(0)
    save_checkpoint(d / "base.pt", build_model("lenet5"), "lenet5", "mnist", 10, (1, 28, 28))
    return d / "base.pt"


def _args(base, out, *extra):
    return ["prune", "--checkpoint", str(base), "--dataset", "fake-mnist", "--val-size", "500", "--finetune-epochs",
            "0", "--no-latency", "--threads", "1", "--decision-examples", "200", "--max-train-examples", "600", *extra, "--out", str(out)]


def test_cli_lam_selects_the_decision_cutoff(base, tmp_path, capsys):
    assert cli.main(_args(base, tmp_path / "run", "--lam", "2")) == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    cut = report["cutoff"]
    assert cut["kind"] == "decision" and cut["lam"] == 2 and cut["examples"] == 200
    assert cut["reads_posterior"] is False and cut["method"].startswith("loss-based greedy elimination")
    assert "read no posterior" in capsys.readouterr().err
    assert report["architecture"]["pruned"] != report["architecture"]["base"]
    assert cut["removals"] == len(cut["path"]) > 0
    assert cut["path"][-1]["utility"] == pytest.approx(cut["utility"])


def test_cli_decision_under_a_budget(base, tmp_path):
    assert cli.main(_args(base, tmp_path / "run", "--cutoff", "decision", "--target-macs", "400000")) == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["cutoff"]["kind"] == "decision" and report["cutoff"]["target"] == {"macs": 400000}
    assert report["pruned"]["macs"] <= 400000
    cut = report["cutoff"]
    assert cut["removals"] + cut["additions"] == len(cut["path"]) and cut["removals"] > 0


@pytest.mark.parametrize("extra,match", [(["--lam", "1", "--arch", "6-8-40-20"], "one cut-off"),
                                         (["--lam", "1", "--target-macs", "100000"], "one cut-off"),
                                         (["--cutoff", "decision", "--target-macs", "10"], "cannot be met")])
def test_cli_refuses_conflicts(base, tmp_path, capsys, extra, match):
    assert cli.main(_args(base, tmp_path / "run", *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0], err
    assert not (tmp_path / "run").exists()


def test_rounds_refit_the_smaller_network_and_keep_original_indices(data_cfg, tmp_path):
    """The shipped LeNet-5 (frozen), the uncertainty cut-off at tau 1, delta 0.2, up to three
    rounds, no fine-tuning: each round starts from the widths the last kept, and the saved
    network is the pre-trained one cut to the kept *original* units. On real MNIST (2,000
    examples) every round removes units (10-20-100-25, then about 8-10-48-13, 6-7-23-7)."""
    from pyro_dirichlet_prune.models.checkpoint import load_checkpoint, shipped_checkpoint

    ckpt = shipped_checkpoint("lenet5", "mnist")
    out = tmp_path / "run"
    assert cli.main(["prune", "--checkpoint", str(ckpt), *data_cfg.cli_args(), "--finetune-epochs", "0",
                     "--no-latency", "--threads", "1", "--rounds", "3", "--tau", "1", "--delta", "0.2",
                     "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    rounds = report["rounds"]
    assert rounds[0]["widths"] == "10-20-100-25" and rounds[-1]["kept"] == report["architecture"]["pruned"]
    for a, b in zip(rounds, rounds[1:]):  # each round starts from the widths the last one kept
        assert b["widths"] == a["kept"] and a["removed"] > 0
    assert len(rounds) == 3 or rounds[-1]["removed"] == 0
    if data_cfg.data_dir is not None:
        assert len(rounds) >= 2 and rounds[1]["removed"] > 0
    original, _ = load_checkpoint(ckpt, "lenet5")
    pruned, _ = load_checkpoint(out / "pruned.pt", "lenet5")
    expected = prune(original, report["kept"], (1, 28, 28))
    x = torch.randn(4, 1, 28, 28)
    assert torch.allclose(pruned(x), expected(x), atol=1e-5)
    posterior = json.loads((out / "posterior.json").read_text())
    assert all(set(v["kept"]) <= set(v["units"]) for v in posterior.values())


def test_rounds_refuse_the_arch_cutoff(base, tmp_path, capsys):
    assert cli.main(_args(base, tmp_path / "run", "--rounds", "2", "--arch", "6-8-40-20")) == 2
    assert "rounds" in capsys.readouterr().err
