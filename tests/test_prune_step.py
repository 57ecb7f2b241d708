"""The one prune → fine-tune → evaluate path (``prune_step.prune_and_finetune``): its metrics are
those of ``evaluate`` on the pruned network before and after fine-tuning, its sizes those of the
pruned network, the surgery check is within tolerance, and the network given is not changed."""
from __future__ import annotations

import pytest
import torch

from pyro_dirichlet_prune.data import DataBundle, Split
from pyro_dirichlet_prune.models import SwitchedNetwork, load_pretrained
from pyro_dirichlet_prune.prune_step import prune_and_finetune
from pyro_dirichlet_prune.training import TrainConfig

KEEP = {"conv1": [0, 2, 5], "conv2": [1, 3, 4, 7, 9], "fc1": list(range(0, 100, 4)), "fc2": list(range(0, 25, 2))}


def _split(n: int, seed: int) -> Split:
    g = torch.Generator().manual_seed(seed)
    return Split(torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g))


@pytest.fixture(scope="module")
def data() -> DataBundle:
    return DataBundle("synthetic", _split(96, 0), _split(40, 1), _split(50, 2), 10, (1, 28, 28), "synthetic")


def _by_hand(logits: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Error and mean NLL computed here, not by ``evaluate``."""
    logp = torch.log_softmax(logits.double(), 1)
    return {"error": float((logits.argmax(1) != y).double().mean()), "nll": float(-logp[torch.arange(len(y)), y].mean())}


def test_metrics_are_those_of_the_pruned_network_before_and_after_finetuning(data):
    """Before fine-tuning the metrics are the masked network's (the pre-trained LeNet-5 with the
    removed units zeroed at their switches, computed by hand here); after it, those of the network
    returned; the sizes are hand counts of LeNet-5 3-5-25-13."""
    net = load_pretrained("lenet5", "mnist").eval()
    before_state = {k: v.clone() for k, v in net.state_dict().items()}
    r = prune_and_finetune(net, KEEP, data, TrainConfig(epochs=1, lr=1e-2, batch_size=32), seed=4)
    masks = {name: torch.zeros(d).index_fill_(0, torch.tensor(KEEP[name]), 1.0)
             for name, d in SwitchedNetwork(net).widths.items()}
    with torch.no_grad(), SwitchedNetwork(net).scaled(masks) as masked:
        for split in ("test", "val"):
            hand = _by_hand(masked(getattr(data, split).x), getattr(data, split).y)
            assert r.pruned[split]["error"] == pytest.approx(hand["error"], abs=1e-12)
            assert r.pruned[split]["nll"] == pytest.approx(hand["nll"], rel=1e-4)
    with torch.no_grad():
        for split in ("test", "val"):
            hand = _by_hand(r.net.eval()(getattr(data, split).x), getattr(data, split).y)
            assert r.finetuned[split]["error"] == pytest.approx(hand["error"], abs=1e-12)
            assert r.finetuned[split]["nll"] == pytest.approx(hand["nll"], rel=1e-4)
    assert r.finetuned != r.pruned  # fine-tuning changed the network (lr 1e-2 on noise)
    assert 0 <= r.surgery_max_abs_diff <= 1e-4
    # conv1 1·3·25+3, conv2 3·5·25+5, fc1 80·25+25, fc2 25·13+13, fc3 13·10+10; MACs 24²·3·25 + 8²·5·3·25 + 80·25 + 25·13 + 13·10
    assert r.size == {"params": 78 + 380 + 2025 + 338 + 140, "macs": 43200 + 24000 + 2000 + 325 + 130, "arch": "3-5-25-13"}
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
