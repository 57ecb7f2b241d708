"""The one prune → fine-tune → evaluate path (``prune_step.prune_and_finetune``): its metrics are
those of ``evaluate`` on the pruned network before and after fine-tuning, its sizes those of the
pruned network, the surgery check is within tolerance, and the network given is not changed."""
from __future__ import annotations

import pytest
import torch

from pyro_dirichlet_prune.data import DataBundle, Split
from pyro_dirichlet_prune.metrics import count_macs, count_params
from pyro_dirichlet_prune.models import load_pretrained
from pyro_dirichlet_prune.prune_step import prune_and_finetune
from pyro_dirichlet_prune.pruning.surgery import prune_units
from pyro_dirichlet_prune.training import TrainConfig, evaluate

KEEP = {"conv1": [0, 2, 5], "conv2": [1, 3, 4, 7, 9], "fc1": list(range(0, 100, 4)), "fc2": list(range(0, 25, 2))}


def _split(n: int, seed: int) -> Split:
    g = torch.Generator().manual_seed(seed)
    return Split(torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g))


@pytest.fixture(scope="module")
def data() -> DataBundle:
    return DataBundle("synthetic", _split(96, 0), _split(40, 1), _split(50, 2), 10, (1, 28, 28), "synthetic")


def test_metrics_are_those_of_the_pruned_network_before_and_after_finetuning(data):
    net = load_pretrained("lenet5", "mnist")
    before_state = {k: v.clone() for k, v in net.state_dict().items()}
    untrained = prune_units(net, KEEP, data.input_shape)
    r = prune_and_finetune(net, KEEP, data, TrainConfig(epochs=1, lr=1e-2, batch_size=32), seed=4)
    assert r.pruned == {"test": evaluate(untrained, data.test), "val": evaluate(untrained, data.val)}
    assert r.finetuned == {"test": evaluate(r.net, data.test), "val": evaluate(r.net, data.val)}
    assert r.finetuned != r.pruned  # fine-tuning changed the network (lr 1e-2 on noise)
    assert 0 <= r.surgery_max_abs_diff <= 1e-4
    assert r.size == {"params": count_params(r.net), "macs": count_macs(r.net, data.input_shape), "arch": "3-5-25-13"}
    assert r.size["params"] < count_params(net)
    assert [p.width for p in r.points] == [3, 5, 25, 13] and r.keep == KEEP
    assert r.training.best_epoch in (0, 1) and len(r.training.history) == 1
    assert all(torch.equal(before_state[k], v) for k, v in net.state_dict().items())


def test_arguments_are_checked(data):
    net = load_pretrained("lenet5", "mnist")
    with pytest.raises(ValueError, match="splits"):
        prune_and_finetune(net, KEEP, data, TrainConfig(epochs=0), splits=("test", "holdout"))
    with pytest.raises(TypeError, match="finetune"):
        prune_and_finetune(net, KEEP, data, {"epochs": 0})
    r = prune_and_finetune(net, KEEP, data, TrainConfig(epochs=0), splits=("val",))
    assert set(r.pruned) == set(r.finetuned) == {"val"}
