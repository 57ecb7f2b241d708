"""Fine-tuning by distillation from the network before pruning, and the one-cycle schedule."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from pyro_dirichlet_prune import prune_and_finetune
from pyro_dirichlet_prune.data import DataBundle, Split
from pyro_dirichlet_prune.models import build_model
from pyro_dirichlet_prune.training import TrainConfig, distillation_loss, train


def test_distillation_loss_equals_a_hand_computation():
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    y = torch.tensor([0, 3, 1, 1, 2])
    T, w = 3.0, 0.7
    p_t = torch.softmax(teacher / T, 1)
    kl = (p_t * (p_t.log() - torch.log_softmax(student / T, 1))).sum(1).mean()
    hand = (1 - w) * F.cross_entropy(student, y) + w * T * T * kl
    torch.testing.assert_close(distillation_loss(student, teacher, y, T, w), hand)
    torch.testing.assert_close(distillation_loss(student, teacher, y, T, 0.0), F.cross_entropy(student, y))
    # a student that copies the teacher pays only the hard term
    torch.testing.assert_close(distillation_loss(teacher, teacher, y, T, w), (1 - w) * F.cross_entropy(teacher, y))


def test_the_soft_term_pulls_the_student_towards_the_teacher():
    teacher = torch.tensor([[2.0, 0.0, -1.0]])
    student = torch.zeros(1, 3, requires_grad=True)
    distillation_loss(student, teacher, torch.tensor([1]), 2.0, 1.0).backward()
    # gradient descent raises the logit the teacher prefers and lowers the one it rejects
    assert student.grad[0, 0] < 0 < student.grad[0, 2]


def _bundle(n: int = 64) -> DataBundle:
    g = torch.Generator().manual_seed(1)
    net = build_model("lenet5").eval()
    x = torch.randn(n, 1, 28, 28, generator=g)
    with torch.no_grad():
        y = net(x).argmax(1)
    split = Split(x, y)
    return DataBundle(name="random", train=split, val=split, test=split, num_classes=10, input_shape=(1, 28, 28),
                      source="random inputs labelled by a LeNet-5")


def test_distilled_fine_tuning_trains_the_student_and_leaves_the_teacher_alone():
    data = _bundle()
    torch.manual_seed(0)
    teacher = build_model("lenet5").eval()
    before = copy.deepcopy(teacher.state_dict())
    keep = {"conv1": [0, 2, 4], "conv2": list(range(8)), "fc1": list(range(30)), "fc2": list(range(10))}
    cfg = dict(epochs=2, lr=5e-3, batch_size=16, seed=0)
    plain = prune_and_finetune(teacher, keep, data, TrainConfig(**cfg), splits=("val",))
    distilled = prune_and_finetune(teacher, keep, data, TrainConfig(**cfg, distill=True), splits=("val",))
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), k
    a, b = plain.net.state_dict(), distilled.net.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a), "distillation changed nothing"
    assert distilled.training.history[-1]["train_loss"] != plain.training.history[-1]["train_loss"]


def test_distillation_and_schedule_options_are_checked_by_name():
    data = _bundle(16)
    with pytest.raises(ValueError, match="teacher"):
        train(build_model("lenet5"), data, TrainConfig(epochs=1, distill=True))
    for kwargs, name in (({"schedule": "step"}, "schedule"), ({"temperature": 0}, "temperature"),
                         ({"distill_weight": 1.5}, "distill_weight")):
        with pytest.raises(ValueError, match=name):
            TrainConfig(**kwargs).validate()


def test_one_cycle_schedule_trains_differently_from_cosine():
    data = _bundle()
    nets = {}
    for schedule in ("cosine", "onecycle"):
        torch.manual_seed(0)
        net = build_model("lenet5", (4, 6, 20, 10))
        train(net, data, TrainConfig(epochs=2, lr=5e-3, batch_size=16, seed=0, schedule=schedule))
        nets[schedule] = net.state_dict()
    assert any(not torch.equal(nets["cosine"][k], nets["onecycle"][k]) for k in nets["cosine"])
