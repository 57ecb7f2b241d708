"""What a user who gets something wrong is told: the exception type and its message, for every
mistake a new user made through the public API (each was once a silent wrong answer or a raw
error from deep inside torch or Pyro)."""
from __future__ import annotations

import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoLowRankMultivariateNormal, AutoNormal
from torch.utils.data import DataLoader, TensorDataset

from pyro_dirichlet_prune import (DirichletGuide, ModuleLocal, SwitchModel, arch_cutoff, count_macs, evaluate,
                                  finetune, fit, posterior_of, prune)
from pyro_dirichlet_prune.models import build_model

SHAPE = (1, 28, 28)


def _setup(n: int = 32):
    torch.manual_seed(0)
    net = build_model("lenet5", widths=(3, 4, 5, 2)).eval()
    x = torch.randn(n, *SHAPE)
    return net, x, net(x).argmax(1)


def test_posterior_of_refuses_a_guide_of_another_model():
    net, _, _ = _setup()
    model_a = SwitchModel(net, SHAPE, num_data=32)
    model_b = SwitchModel(build_model("lenet5", widths=(3, 4, 5, 2)), SHAPE, num_data=32)  # same layer names
    for guide in (DirichletGuide(model_a), ModuleLocal(AutoNormal(model_a))):
        with pytest.raises(ValueError, match=r"guide was built for another SwitchModel \(layers conv1, conv2, fc1, "
                                             r"fc2\) than model \(layers conv1, conv2, fc1, fc2\)"):
            posterior_of(model_b, guide)


def test_posterior_of_names_the_sites_a_foreign_autoguide_lacks():
    net, x, y = _setup()
    model = SwitchModel(net, SHAPE, num_data=32)

    def other_model(x, y=None):
        pyro.sample("switch.other", pyro.distributions.Dirichlet(torch.ones(3)))

    guide = AutoNormal(other_model)
    guide(x, y)
    with pytest.raises(ValueError, match=r"guide samples no site switch.conv1, switch.conv2, switch.fc1, switch.fc2 "
                                         r"\(its sites: switch.other"):
        posterior_of(model, guide, num_samples=2)


def test_a_wrong_input_shape_is_refused_where_it_is_given():
    net, _, _ = _setup()
    message = r"input_shape \(1, 32, 32\) does not fit LeNet5: one input of that shape fails in its forward \(mat1"
    with pytest.raises(ValueError, match=message):
        SwitchModel(net, (1, 32, 32), num_data=32)
    with pytest.raises(ValueError, match=message):
        prune(net, {"conv1": [0, 1]}, (1, 32, 32))
    with pytest.raises(ValueError, match=message):
        count_macs(net, (1, 32, 32))
    with pytest.raises(ValueError, match=r"input_shape must be positive ints, the shape of one input without the "
                                         r"batch dimension"):
        SwitchModel(net, (1, 1, 28, 28.0), num_data=32)
    assert all(p.requires_grad for p in net.parameters()) and not net.training  # the check left it as it was


def test_a_keep_set_is_checked_against_the_network():
    net, _, _ = _setup()
    with pytest.raises(ValueError, match=r"keep: no prunable layer named 'conv3'; the layers are conv1, conv2, fc1, fc2"):
        prune(net, {"conv3": [0]}, SHAPE)
    with pytest.raises(ValueError, match=r"keep\['conv2'\]: unit indices must lie in 0..3, got \[0, 4\]"):
        prune(net, {"conv2": [0, 4]}, SHAPE)
    with pytest.raises(TypeError, match=r"keep\['conv2'\] must be a collection of unit indices, got 3"):
        prune(net, {"conv2": 3}, SHAPE)


def test_an_architecture_mapping_must_name_every_layer():
    scores = {"conv1": torch.rand(3), "conv2": torch.rand(4), "fc1": torch.rand(5), "fc2": torch.rand(2)}
    with pytest.raises(ValueError, match=r"arch: a mapping must give a count for every layer \(conv1, conv2, fc1, "
                                         r"fc2\); missing fc2; unknown fc3"):
        arch_cutoff(scores, {"conv1": 2, "conv2": 2, "fc1": 3, "fc3": 1})
    with pytest.raises(TypeError, match=r"arch: counts must be ints"):
        arch_cutoff(scores, {"conv1": 2, "conv2": 2.5, "fc1": 3, "fc2": 1})
    assert {k: len(v) for k, v in arch_cutoff(scores, {"conv1": 2, "conv2": 2, "fc1": 3, "fc2": 1}).items()} == \
        {"conv1": 2, "conv2": 2, "fc1": 3, "fc2": 1}


def test_a_loader_of_inputs_only_is_refused():
    net, x, _ = _setup()
    with pytest.raises(TypeError, match=r"data must yield \(x, y\) or \(x, y, idx\) batches \(inputs, integer class "
                                        r"labels and optionally the examples' indices\), got a list of 1"):
        evaluate(net, DataLoader(TensorDataset(x), batch_size=8))


@pytest.mark.parametrize("bad", ["range", "negative", "float"])
def test_labels_must_be_class_indices_of_the_network(bad):
    net, x, y = _setup()
    labels = {"range": torch.full_like(y, 10), "negative": y - 5, "float": y.double()}[bad]
    err, pattern = (TypeError, r"labels y must be integer class indices, got dtype torch.float64") if bad == "float" \
        else (ValueError, r"y: labels must be class indices in 0..9 \(the network has 10 outputs\), got values from")
    loader = DataLoader(TensorDataset(x, labels), batch_size=8)
    with pytest.raises(err, match=pattern):
        evaluate(net, loader)
    with pytest.raises(err, match=pattern):
        finetune(net, loader, loader, epochs=1, progress=False)
    model = SwitchModel(net, SHAPE, num_data=32)
    with pytest.raises(err, match=pattern):
        fit(model, DirichletGuide(model), loader, progress=False)
    if bad != "float":  # a user's own SVI loop meets the same message from the model
        svi = SVI(model, DirichletGuide(model), pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
        with pytest.raises(err, match=pattern):
            svi.step(x, labels)


def test_a_joint_autoguide_cannot_sit_out_layers():
    net, x, y = _setup()
    model = SwitchModel(net, SHAPE, num_data=32)
    guide = ModuleLocal(AutoLowRankMultivariateNormal(model))
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    with model.switching(["conv1"]), pytest.raises(
            ValueError, match=r"AutoLowRankMultivariateNormal draws every layer's switch from one joint latent, so "
                              r"it cannot fit some layers while others \(switch.conv2, switch.fc1, switch.fc2\) sit out"):
        svi.step(x, y)
    fit(model, guide, [(x, y)], schedule="joint", progress=False)  # with every layer switched it fits
    assert set(posterior_of(model, guide, num_samples=4).means) == set(model.layers)
