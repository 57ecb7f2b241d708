"""PosteriorImportance drives Torch-Pruning's own pruner by the switch posterior.

On the shipped LeNet-5 with a hand-set Dirichlet posterior (so the ranking is known): the pruner
removes exactly the units of lowest D_l · E[s_lj] (per layer and globally), which the weights of
the pruned network show; the pruned network computes what the original computes with those
units' outputs zeroed; a layer without a switch is left alone; the example script runs end to end.
"""
from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch_pruning as tp

from pyro_dirichlet_prune import load_pretrained
from pyro_dirichlet_prune.inference.posterior import dirichlet_posterior
from pyro_dirichlet_prune.models.switched import SwitchedNetwork
from pyro_dirichlet_prune.pruning.importance import PosteriorImportance
from pyro_dirichlet_prune.pruning.surgery import mask_scales

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "torch_pruning_importance.py"
INPUT = torch.zeros(1, 1, 28, 28)
LAYERS = ("conv1", "conv2", "fc1", "fc2")


def concentrations(net) -> dict[str, torch.Tensor]:
    """Distinct concentrations in a shuffled order, so that every layer's ranking and the global
    ranking of D_l · phi_lj / phi_l0 have no ties and are not the unit order."""
    g = torch.Generator().manual_seed(1)
    return {p.name: 0.2 + 4.0 * torch.rand(p.width, generator=g, dtype=torch.float64) for p in net.switch_points()}


def global_scores(conc: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {n: c.numel() * c / c.sum() for n, c in conc.items()}


def pruned_with(net, posterior, **kwargs):
    """``net`` pruned in place by Torch-Pruning's pruner ranked by the posterior's importance."""
    for p in net.parameters():
        p.requires_grad_(True)
    importance = PosteriorImportance(posterior, net.switch_points())
    pruner = tp.pruner.BasePruner(net, INPUT, importance, **kwargs)
    pruner.step()
    return net


def check_kept(original, pruned, keep: dict[str, list[int]]) -> None:
    """The pruned network holds exactly the original's weights of the kept units, in order."""
    cols = {"conv1": [0], "conv2": keep["conv1"], "fc1": [16 * c + k for c in keep["conv2"] for k in range(16)],
            "fc2": keep["fc1"], "fc3": keep["fc2"]}
    rows = dict(keep, fc3=list(range(10)))
    for name in ("conv1", "conv2", "fc1", "fc2", "fc3"):
        a, b = getattr(original, name), getattr(pruned, name)
        assert torch.equal(b.weight, a.weight[rows[name]][:, cols[name]]), name
        assert torch.equal(b.bias, a.bias[rows[name]]), name


@pytest.fixture
def net():
    return load_pretrained("lenet5", "mnist")


@pytest.fixture
def conc(net):
    return concentrations(net)


def test_scores_are_scaled_means_and_tail_probabilities(net, conc):
    post = dirichlet_posterior(conc)
    scores = PosteriorImportance(post, net.switch_points()).scores
    for name, s in global_scores(conc).items():
        assert torch.allclose(scores[name], s, rtol=1e-12)
        assert scores[name].sum().item() == pytest.approx(conc[name].numel())
    below = post.prob_below(0.7)
    tail = PosteriorImportance(post, net.switch_points(), score="prob_below", tau=0.7).scores
    for name in LAYERS:
        assert torch.allclose(tail[name], 1 - below[name])
        assert ((tail[name] >= 0) & (tail[name] <= 1)).all()


def test_group_scores_follow_root_indices_and_unswitched_layers_get_none(net, conc):
    imp = PosteriorImportance(dirichlet_posterior(conc), net.switch_points())
    for p in net.parameters():
        p.requires_grad_(True)
    graph = tp.DependencyGraph().build_dependency(net, example_inputs=INPUT)
    scores = global_scores(conc)
    group = graph.get_pruning_group(net.conv2, tp.prune_conv_out_channels, idxs=[7, 2, 11])
    assert torch.allclose(imp(group), scores["conv2"][[7, 2, 11]])
    assert imp(graph.get_pruning_group(net.fc3, tp.prune_linear_out_channels, idxs=list(range(10)))) is None
    # a group rooted at fc2's inputs is scored by the coupled outputs of fc1, mapped onto its root indices
    group = graph.get_pruning_group(net.fc2, tp.prune_linear_in_channels, idxs=[5, 0, 1])
    assert torch.allclose(imp(group), scores["fc1"][[5, 0, 1]])


@pytest.mark.parametrize("ratios", [{"conv1": 0.5, "conv2": 0.25, "fc1": 0.6, "fc2": 0.2}])
def test_per_layer_ratios_remove_the_lowest_scaled_means(net, conc, ratios):
    original = copy.deepcopy(net)
    pruned_with(net, dirichlet_posterior(conc), pruning_ratio_dict={getattr(net, n): r for n, r in ratios.items()},
                ignored_layers=[net.fc3])
    expected_widths = {"conv1": 5, "conv2": 15, "fc1": 40, "fc2": 20}
    keep = {n: sorted(torch.argsort(s, descending=True)[:expected_widths[n]].tolist())
            for n, s in global_scores(conc).items()}
    assert net.widths == tuple(expected_widths[n] for n in LAYERS)
    check_kept(original, net, keep)


def test_global_pruning_removes_the_lowest_scaled_means_across_layers(net, conc):
    original = copy.deepcopy(net)
    scores = global_scores(conc)
    pruned_with(net, dirichlet_posterior(conc), global_pruning=True, pruning_ratio=0.5, ignored_layers=[net.fc3])
    flat = torch.cat([scores[n] for n in LAYERS])
    removed = torch.argsort(flat)[: len(flat) - len(flat) // 2]
    threshold = flat[removed].max()
    keep = {n: (scores[n] > threshold).nonzero().view(-1).tolist() for n in LAYERS}
    assert sum(len(k) for k in keep.values()) == len(flat) // 2
    assert len({len(k) / scores[n].numel() for n, k in keep.items()}) > 1  # not the same ratio in every layer
    check_kept(original, net, keep)


def test_a_layer_without_a_switch_is_left_alone(net, conc):
    """fc3 (the classifier) has no switch: its group scores None and Torch-Pruning skips it even
    when it is not among the ignored layers."""
    post = dirichlet_posterior({n: c for n, c in conc.items() if n != "fc2"})
    points = [p for p in net.switch_points() if p.name != "fc2"]
    for p in net.parameters():
        p.requires_grad_(True)
    pruner = tp.pruner.BasePruner(net, INPUT, PosteriorImportance(post, points), pruning_ratio=0.5)
    pruner.step()
    assert net.widths == (5, 10, 50, 25)
    assert net.fc3.out_features == 10


def test_pruned_network_equals_the_masked_original(net, conc):
    original = copy.deepcopy(net)
    scores = global_scores(conc)
    pruned_with(net, dirichlet_posterior(conc), global_pruning=True, pruning_ratio=0.6, ignored_layers=[net.fc3])
    kept = dict(zip(LAYERS, net.widths))
    keep = {n: sorted(torch.argsort(scores[n], descending=True)[:kept[n]].tolist()) for n in LAYERS}
    check_kept(original, net, keep)
    switched = SwitchedNetwork(original, original.switch_points())
    x = torch.randn(64, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    with torch.no_grad(), switched.scaled(mask_scales(switched.points, keep)):
        reference = switched(x)
    with torch.no_grad():
        out = net(x)
    assert torch.allclose(out, reference, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        assert not torch.allclose(out, switched(x), atol=1e-3)  # the masks matter


def test_errors_name_the_argument(net, conc):
    post = dirichlet_posterior(conc)
    points = net.switch_points()
    with pytest.raises(ValueError, match="score"):
        PosteriorImportance(post, points, score="median")
    with pytest.raises(ValueError, match="tau"):
        PosteriorImportance(post, points, score="prob_below", tau=0.0)
    with pytest.raises(TypeError, match="tau"):
        PosteriorImportance(post, points, tau="0.5")
    with pytest.raises(TypeError, match="posterior"):
        PosteriorImportance(conc, points)
    with pytest.raises(TypeError, match="points"):
        PosteriorImportance(post, ["conv1"])
    with pytest.raises(ValueError, match="points: the posterior has no layer"):
        PosteriorImportance(dirichlet_posterior({"conv1": conc["conv1"]}), points)
    with pytest.raises(ValueError, match="points: layer conv1 has 10 units but its posterior 3"):
        PosteriorImportance(dirichlet_posterior({"conv1": torch.ones(3)}), points[:1])


def test_iterative_pruning_is_refused_with_a_reason(net, conc):
    for p in net.parameters():
        p.requires_grad_(True)
    with pytest.raises(ValueError, match="iterative_steps=1"):
        pruner = tp.pruner.BasePruner(net, INPUT, PosteriorImportance(dirichlet_posterior(conc), net.switch_points()),
                                      pruning_ratio=0.5, iterative_steps=2, ignored_layers=[net.fc3])
        pruner.step()
        pruner.step()


def test_example_script_runs_quick_on_real_mnist(mnist_dir):
    """``mnist_dir`` (conftest): MNIST under $DATA_DIR or ../shared/data, or None."""
    if mnist_dir is None:
        pytest.skip("no MNIST in torchvision's layout under $DATA_DIR or ../shared/data")
    done = subprocess.run([sys.executable, str(EXAMPLE), "--quick", "--data-dir", str(mnist_dir)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    macs = {k: int(v) for k, v in re.findall(r"^MACs (before|after): (\d+)", done.stdout, re.M)}
    assert set(macs) == {"before", "after"}, done.stdout
    assert 0 < macs["after"] < macs["before"]
    errors = dict(re.findall(r"^test error (before|after fine-tune)[^:]*: ([0-9.]+)", done.stdout, re.M))
    assert float(errors["before"]) < 0.02
    assert float(errors["after fine-tune"]) < 0.1
