"""The extension points as a user meets them: a guide is a ``GuideBuilder`` (name or object, the
same checks everywhere), a cut-off is a ``Cutoff`` (the shipped ones agree with the functions of
the quick start; a user's goes into ``PruneConfig`` alone)."""
from __future__ import annotations

import pytest
import torch

from pyro_dirichlet_prune import arch_cutoff, budget_cutoff, rate_cutoff, uncertainty_cutoff
from pyro_dirichlet_prune.errors import UserError
from pyro_dirichlet_prune.inference.builders import GUIDE_BUILDERS, GuideBuilder, guide_builder
from pyro_dirichlet_prune.inference.posterior import dirichlet_posterior
from pyro_dirichlet_prune.inference.svi import SwitchConfig, make_guide
from pyro_dirichlet_prune.models import build_model
from pyro_dirichlet_prune.models.switched import SwitchModel
from pyro_dirichlet_prune.prune_config import PruneConfig
from pyro_dirichlet_prune.pruning.cutoffs import (ArchCutoff, BudgetCutoff, Cutoff, DecisionCutoff, RateCutoff,
                                                  UncertaintyCutoff)
from pyro_dirichlet_prune.unit_choice import resolve_cutoff

SHAPE = (1, 28, 28)


def _posterior():
    g = torch.Generator().manual_seed(0)
    widths = {"conv1": 10, "conv2": 20, "fc1": 100, "fc2": 25}
    phis = {k: torch.rand(d, generator=g, dtype=torch.float64) ** 3 * 40 + 0.1 for k, d in widths.items()}
    return dirichlet_posterior(phis)


def test_the_shipped_cutoff_objects_choose_what_the_quick_start_functions_choose():
    post, net = _posterior(), build_model("lenet5")
    assert UncertaintyCutoff(0.5, 0.05)(post, net, SHAPE) == uncertainty_cutoff(post, 0.5, 0.05)
    budget = BudgetCutoff(macs=150_000, params=8_000)
    assert budget(post, net, SHAPE) == budget_cutoff(post, net, SHAPE, macs=150_000, params=8_000)
    assert ArchCutoff("6-8-40-20")(post, net, SHAPE) == arch_cutoff(post, "6-8-40-20")
    assert RateCutoff(0.5)(post, net, SHAPE) == rate_cutoff(post, 0.5)
    kept = UncertaintyCutoff(0.5, 0.05)(post, net, SHAPE)
    assert sum(map(len, kept.values())) < 155  # the posterior above is confident about some units
    assert BudgetCutoff(macs=150_000).describe() == {"kind": "budget", "tau": 1.0, "target": {"macs": 150_000}}


def test_cutoff_settings_are_checked_when_made():
    with pytest.raises(ValueError, match=r"delta must be in \(0, 1\), got 1.5"):
        UncertaintyCutoff(0.5, 1.5)
    with pytest.raises(ValueError, match="macs, params: give a budget"):
        BudgetCutoff()
    with pytest.raises(ValueError, match="macs must be a positive integer, got 0"):
        BudgetCutoff(macs=0)
    with pytest.raises(ValueError, match=r"rate must be in \[0, 1\), got 1"):
        RateCutoff(1)
    with pytest.raises(ValueError, match="measure must be one of"):
        DecisionCutoff(measure="flops")
    with pytest.raises(ValueError, match="train: the decision cut-off needs the training split"):
        DecisionCutoff()(_posterior(), build_model("lenet5"), SHAPE)


class KeepFirst(Cutoff):
    """A user's cut-off: the first k units of every layer."""

    kind = "first"

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def settings(self) -> dict:
        return {"k": self.k}

    def choose(self, posterior, net, input_shape, points, train, seed, fit):
        return {p.name: list(range(min(self.k, p.width))) for p in points}


def test_a_user_cutoff_goes_into_prune_config_alone():
    post, net = _posterior(), build_model("lenet5")
    assert KeepFirst(3)(post, net, SHAPE) == {"conv1": [0, 1, 2], "conv2": [0, 1, 2], "fc1": [0, 1, 2], "fc2": [0, 1, 2]}
    assert KeepFirst(3) == KeepFirst(3) and KeepFirst(3) != KeepFirst(4)  # a resumed run compares configurations
    assert resolve_cutoff(PruneConfig(cutoff=KeepFirst(3))) == "first"
    with pytest.raises(UserError, match="cutoff: a Cutoff object carries its own settings; do not give arch too"):
        resolve_cutoff(PruneConfig(cutoff=KeepFirst(3), arch="6-8-40-20"))
    with pytest.raises(UserError, match="cutoff must be a cut-off name"):
        resolve_cutoff(PruneConfig(cutoff=3))

    class Empty(KeepFirst):
        def choose(self, *args):
            return {"conv1": []}

    with pytest.raises(ValueError, match=r"keep\['conv1'\] is empty"):
        Empty(1)(post, net, SHAPE)


class Fixed(GuideBuilder):
    name = "fixed-dirichlet"

    def build(self, model, cfg):
        return GUIDE_BUILDERS["dirichlet"].build(model, cfg)


def test_a_guide_is_a_name_or_a_builder_and_is_checked_the_same_way():
    assert guide_builder("normal").name == "normal" and guide_builder(Fixed()).name == "fixed-dirichlet"
    with pytest.raises(ValueError, match="unknown guide 'gauss'; choose one of dirichlet, dirichlet-mean, normal, "
                                         "delta, lowrank, or give a GuideBuilder"):
        SwitchConfig(guide="gauss").validate()
    with pytest.raises(TypeError, match="guide must be a guide name .* or a GuideBuilder, got int"):
        SwitchConfig(guide=3).validate()
    with pytest.raises(ValueError, match="guide fixed-dirichlet needs elbo='trace'"):
        SwitchConfig(guide=Fixed(), elbo="meanfield").validate()
    with pytest.raises(ValueError, match="per-example switch sampling needs guide='dirichlet', not fixed-dirichlet"):
        SwitchConfig(guide=Fixed(), sampling="per-example").validate()
    cfg = SwitchConfig(guide=Fixed())
    cfg.validate()
    model = SwitchModel(build_model("lenet5"), SHAPE, num_data=10)
    assert set(make_guide(cfg, model).concentrations()) == set(model.layers)
    assert Fixed() == Fixed() and Fixed().describe()["guide"] == "fixed-dirichlet"


def test_prune_config_defaults_come_from_the_model_and_data_set():
    vgg = PruneConfig(model="vgg16", dataset="cifar10").finetune_recipe()
    assert (vgg.optimizer, vgg.lr, vgg.weight_decay, vgg.augment_crop, vgg.augment_flip, vgg.augment_shift) == \
        ("sgd", 0.01, 5e-4, 4, True, 0)
    lenet = PruneConfig().finetune_recipe()
    assert (PruneConfig().model, lenet.optimizer, lenet.lr, lenet.augment_shift, lenet.epochs) == \
        ("lenet5", "adam", 2e-3, 2, 40)
    assert PruneConfig(dataset="fashion-mnist").finetune_recipe().epochs == 80
    with pytest.raises(UserError, match="give model or model_file, not both"):
        PruneConfig(model="lenet5", model_file="net.pt")
    assert PruneConfig(model_file="net.pt").model is None
