"""The layers below a switch computed once (``inference.frozen_head``): the tail on the cached head
gives the whole network's logits under any scales, residual branches included; the settle gives
the same concentrations with and without it; where the split cannot be made it is not made."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from pyro_dirichlet_prune import DirichletGuide, SwitchModel
from pyro_dirichlet_prune.data import Split
from pyro_dirichlet_prune.inference.concentration import layer_gradient_hessian, layer_nll, settle_concentrations
from pyro_dirichlet_prune.inference.frozen_head import frozen_head
from pyro_dirichlet_prune.models import SwitchedNetwork
from pyro_dirichlet_prune.models.points import SwitchPoint
from pyro_dirichlet_prune.models.registry import build_model


def _split(shape, n=96, seed=0) -> Split:
    g = torch.Generator().manual_seed(seed)
    return Split(torch.randn(n, *shape, generator=g), torch.randint(0, 10, (n,), generator=g))


def _random_scales(network: SwitchedNetwork, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.rand(d, generator=g, dtype=torch.float64) * 2 for k, d in network.widths.items()}


@pytest.mark.parametrize("name,shape", [("lenet5", (1, 28, 28)), ("wrn-10-1", (3, 32, 32))])
def test_the_tail_on_the_cached_head_is_the_whole_network_under_any_scales(name, shape):
    """For every switch point, with the other points scaled (above it: fixed when the head is
    built; below it: live through their hooks) and the point itself at new scales: the same logits
    as the whole network. In the residual network the tail also reads a block's input (the skip
    branch), which the head caches beside the switched output."""
    torch.manual_seed(0)
    network = SwitchedNetwork(build_model(name).eval())
    data = _split(shape)
    widest = 0
    for layer in network.widths:
        others = {k: v for k, v in _random_scales(network, 1).items() if k != layer}
        head = frozen_head(network, layer, data, {k: v.float() for k, v in others.items()}, batch_size=40)
        assert head is not None and len(head) == len(data)
        widest = max(widest, len(head.values))
        for seed in (2, 3):
            scales = {**others, layer: _random_scales(network, seed)[layer]}
            with torch.no_grad(), network.scaled({k: v.float() for k, v in scales.items()}):
                want = network(data.x[:50])
                got = head.logits(tuple(v[:50] for v in head.values))
            assert torch.allclose(got, want, atol=1e-5, rtol=1e-5), layer
    if name.startswith("wrn"):
        assert widest >= 2  # some tail reads a value besides the switched output: the residual branch


def test_the_full_data_passes_and_the_settle_are_the_same_with_the_head_computed_once():
    """layer_nll, its gradient and the Hessian on a FrozenHead equal those on the examples; the
    whole settle (which builds the heads itself from a Split) lands on the same concentrations as
    the settle fed minibatches, which runs the whole network."""
    torch.manual_seed(0)
    net = build_model("lenet5").eval()
    data = _split((1, 28, 28), n=300)
    model = SwitchModel(net, num_data=len(data))
    for layer in ("conv2", "fc1"):
        mean = torch.distributions.Dirichlet(torch.ones(model.widths[layer], dtype=torch.float64)).sample()
        head = frozen_head(model.network, layer, data)
        a, ga = layer_nll(model, layer, mean, data, gradient=True)
        b, gb = layer_nll(model, layer, mean, head, gradient=True)
        assert b == pytest.approx(a, rel=1e-6) and torch.allclose(gb, ga, rtol=1e-5, atol=1e-6)
        g1, h1 = layer_gradient_hessian(model, layer, mean, data, batch_size=64, max_examples=200)
        g2, h2 = layer_gradient_hessian(model, layer, mean, head, batch_size=64, max_examples=200)
        assert torch.allclose(h2, h1, rtol=1e-5, atol=1e-6 * float(h1.abs().max()))
        with pytest.raises(ValueError, match="FrozenHead below"):
            layer_nll(model, "fc2", torch.full((model.widths["fc2"],), 1 / model.widths["fc2"]), head)
    results = []
    for source in (data, [(data.x[a:a + 100], data.y[a:a + 100]) for a in range(0, 300, 100)]):
        guide = DirichletGuide(model, init_concentration=5.0)
        g = torch.Generator().manual_seed(1)
        guide.set_concentrations({k: torch.rand(d, generator=g) * 5 + 0.5 for k, d in model.widths.items()})
        out = settle_concentrations(model, guide, source, layers=["conv2", "fc1", "fc2"], whole=True,
                                    max_examples=200, batch_size=100)
        results.append((out, {k: guide.concentration(k).detach().double() for k in model.widths}))
    (out_a, phi_a), (out_b, phi_b) = results
    for k in ("conv2", "fc1", "fc2"):
        assert out_a[k]["step"] == out_b[k]["step"]
        assert torch.allclose(phi_a[k], phi_b[k], rtol=1e-4), k


class Branchy(nn.Module):
    """Its forward depends on the data's values: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 8), nn.Linear(8, 3)

    def switch_points(self) -> list[SwitchPoint]:
        return [SwitchPoint("fc1", self.fc1)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc1(x))
        return self.fc2(h if float(h.sum()) > 0 else -h)


def test_no_head_where_the_split_cannot_or_should_not_be_made():
    """Untraceable forward, a cache over the byte limit, a user's hook on the switched layer, data
    that is not a Split: None, and the callers run the whole network. Errors name the argument."""
    data = Split(torch.randn(20, 6), torch.randint(0, 3, (20,)))
    branchy = SwitchedNetwork(Branchy())
    assert frozen_head(branchy, "fc1", data) is None
    model = SwitchModel(Branchy(), num_data=20)
    assert layer_nll(model, "fc1", torch.full((8,), 1 / 8), data)[0] > 0  # the whole network still runs

    lenet = SwitchedNetwork(build_model("lenet5").eval())
    images = _split((1, 28, 28), n=50)
    assert frozen_head(lenet, "conv2", images, max_bytes=50 * 20 * 8 * 8 * 4 - 1) is None
    assert frozen_head(lenet, "conv2", images, max_bytes=50 * 20 * 8 * 8 * 4) is not None
    assert frozen_head(lenet, "fc1", [(images.x, images.y)]) is None
    handle = lenet.net.fc1.register_forward_hook(lambda m, i, o: o * 2)
    try:
        assert frozen_head(lenet, "fc1", images) is None
        with lenet.scaled({}):  # beside the network's own switch hook too
            assert frozen_head(lenet, "fc1", images) is None
    finally:
        handle.remove()
    assert frozen_head(lenet, "fc1", images) is not None
    with lenet.scaled({}):  # the network's own hook alone does not count
        assert frozen_head(lenet, "fc1", images) is not None
    with pytest.raises(ValueError, match="layer: no switch point named 'fc9'"):
        frozen_head(lenet, "fc9", images)
    with pytest.raises(TypeError, match="network must be a SwitchedNetwork"):
        frozen_head(lenet.net, "fc1", images)


def test_the_full_data_passes_leave_every_layer_in_its_own_mode():
    """A network in eval mode inside a switch model (whose wrapper is in train mode) keeps its
    batch-norms in eval mode through the settle's passes and the head's build; a layer the user
    left in train mode stays so."""
    torch.manual_seed(0)
    net = build_model("wrn-10-1").eval()
    net.bn.train()
    model = SwitchModel(net, num_data=24)
    data = _split((3, 32, 32), n=24)
    layer = model.layers[1]
    mean = torch.full((model.widths[layer],), 1 / model.widths[layer], dtype=torch.float64)
    modes = [m.training for m in net.modules()]
    layer_nll(model, layer, mean, data, gradient=True)
    layer_gradient_hessian(model, layer, mean, data, batch_size=12)
    frozen_head(model.network, layer, data)
    assert [m.training for m in net.modules()] == modes and net.bn.training and not net.fc.training
    from pyro_dirichlet_prune.metrics import count_macs
    from pyro_dirichlet_prune.training import evaluate

    net.train()
    net.bn.eval()  # a frozen batch-norm in a training network
    modes = [m.training for m in net.modules()]
    evaluate(net, data)
    count_macs(net, (3, 32, 32))
    assert [m.training for m in net.modules()] == modes and not net.bn.training and net.fc.training


def test_switch_learning_with_the_heads_is_the_same_fit_and_skips_the_layers_below():
    """fit's layer-by-layer stages on FrozenHeads: the same concentrations as without them, step
    for step, while conv1 runs only in its own stage (and once per example to build the heads);
    minibatches that are not rows of the split (here: augmented) run the whole network."""
    from pyro_dirichlet_prune import SplitLoader, fit
    from pyro_dirichlet_prune.inference.frozen_head import FrozenHeads

    data = _split((1, 28, 28), n=120)
    calls = []
    fitted = []
    for use_heads in (False, True):
        torch.manual_seed(0)
        net = build_model("lenet5").eval()
        handle = net.conv1.register_forward_hook(lambda m, i, o: calls.append(len(o)))
        model = SwitchModel(net, num_data=len(data))
        heads = FrozenHeads(model.network, data) if use_heads else None
        guide = DirichletGuide(model, init_concentration=5.0)
        loader = SplitLoader(data, 40, True, torch.Generator().manual_seed(0))
        calls.clear()
        fit(model, guide, loader, epochs=2, seed=0, progress=False, heads=heads)
        fitted.append({k: guide.concentration(k).detach().clone() for k in model.widths})
        handle.remove()
        if use_heads:
            # conv1's stage (2 epochs of 120; the counting hook on conv1 keeps it from a head of its own),
            # then for each of the three heads above it a one-example probe of its size and one pass to build it
            assert calls == [40] * 6 + [1, 120] * 3
            assert heads.get("conv1") is None and heads.get("fc1") is not None
        else:
            assert sum(calls) == 4 * 2 * 120
    for k in fitted[0]:
        assert torch.allclose(fitted[0][k], fitted[1][k], rtol=1e-5), k
    shifted = SplitLoader(data, 40, True, torch.Generator().manual_seed(0), augment_shift=2)
    calls.clear()
    handle = model.network.net.conv1.register_forward_hook(lambda m, i, o: calls.append(len(o)))
    only_fc1 = model.restricted(["fc1"])  # sharing the network, and so the heads
    fit(only_fc1, DirichletGuide(only_fc1), shifted, epochs=1, seed=0, progress=False, heads=heads)
    assert sum(calls) == 120
    calls.clear()
    fit(only_fc1, DirichletGuide(only_fc1), loader, epochs=1, seed=0, progress=False, heads=heads)
    handle.remove()
    assert sum(calls) == 0
