"""On a synthetic task with a known answer, the switch posterior puts its mass on the units
that carry the label.

Toy network: x ~ N(0, I_6), y = 1[x_1 + x_3 + x_4 > 0]; hidden = identity(x) (the switched
layer), logits = ±2 · w·hidden with w = 1 on units {1, 3, 4}, label-independent noise
weights on units {0, 2} and weight 0 on unit 5. Raising the mass of the label units sharpens
the likelihood and lowering the noise units removes noise, so E_q[s] must rank {1, 3, 4}
above {0, 2, 5}.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from pyro_dirichlet_prune.data import Split
from pyro_dirichlet_prune.inference.svi import SwitchConfig, fit_switches
from pyro_dirichlet_prune.models import SwitchedNetwork
from pyro_dirichlet_prune.models.switch_points import SwitchPoint
from pyro_dirichlet_prune.pruning.cutoff import keep_top

IMPORTANT = [1, 3, 4]
UNIMPORTANT = [0, 2, 5]


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(6, 6)
        self.out = nn.Linear(6, 2)
        with torch.no_grad():
            self.hidden.weight.copy_(torch.eye(6))
            self.hidden.bias.zero_()
            w = torch.tensor([1.0, 1.0, -1.0, 1.0, 1.0, 0.0]) * 2
            self.out.weight.copy_(torch.stack([-w, w]))
            self.out.bias.zero_()

    def switch_points(self):
        return [SwitchPoint("hidden", self.hidden)]

    def forward(self, x):
        return self.out(self.hidden(x))


def _data(n=512):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 6, generator=g)
    y = (x[:, IMPORTANT].sum(1) > 0).long()
    return Split(x, y)


@pytest.mark.parametrize("kw", [dict(), dict(elbo="meanfield"), dict(guide="dirichlet-mean")],
                         ids=["trace", "meanfield", "mean"])
def test_posterior_mean_ranks_label_units_first(kw):
    split = _data()
    cfg = SwitchConfig(batch_size=64, epochs=25, lr=0.1, alpha0=0.5, **kw)
    fit = fit_switches(SwitchedNetwork(Toy()), split, cfg)
    mean = fit.posterior_means()["hidden"]
    assert float(mean[IMPORTANT].min()) > float(mean[UNIMPORTANT].max()), mean
    assert float(mean[IMPORTANT].sum()) > 0.8, mean
    assert keep_top(fit.posterior_means(), {"hidden": 3}) == {"hidden": IMPORTANT}
    # the -ELBO went down: the fit improved on the uniform start
    first, last = sum(fit.losses[:8]) / 8, sum(fit.losses[-8:]) / 8
    assert last < first
