"""Hand-written forward passes used as references by the tests (no hooks, no library code)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _scale(t: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    if scale is None:
        return t
    return t * scale.to(t.dtype).view(1, -1, *([1] * (t.dim() - 2)))


def lenet5_forward(net, x: torch.Tensor, scales: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """LeNet5 with each prunable layer's pre-activation multiplied channel-wise by scales[name]."""
    scales = scales or {}
    h = _scale(F.conv2d(x, net.conv1.weight, net.conv1.bias), scales.get("conv1"))
    h = F.max_pool2d(F.relu(h), 2)
    h = _scale(F.conv2d(h, net.conv2.weight, net.conv2.bias), scales.get("conv2"))
    h = F.max_pool2d(F.relu(h), 2).flatten(1)
    h = F.relu(_scale(h @ net.fc1.weight.T + net.fc1.bias, scales.get("fc1")))
    h = F.relu(_scale(h @ net.fc2.weight.T + net.fc2.bias, scales.get("fc2")))
    return h @ net.fc3.weight.T + net.fc3.bias


def lenet5_params(c1: int, c2: int, f1: int, f2: int, classes: int = 10) -> int:
    return (25 * c1 + c1) + (25 * c1 * c2 + c2) + (16 * c2 * f1 + f1) + (f1 * f2 + f2) + (f2 * classes + classes)


def lenet5_macs(c1: int, c2: int, f1: int, f2: int, classes: int = 10) -> int:
    # conv1: 24x24 outputs x 25 taps; conv2: 8x8 outputs x 25 taps x c1 inputs
    return 24 * 24 * 25 * c1 + 8 * 8 * 25 * c1 * c2 + 16 * c2 * f1 + f1 * f2 + f2 * classes


def caffe_params(c1: int, c2: int, f1: int, classes: int = 10) -> int:
    return (25 * c1 + c1) + (25 * c1 * c2 + c2) + (16 * c2 * f1 + f1) + (f1 * classes + classes)


def caffe_macs(c1: int, c2: int, f1: int, classes: int = 10) -> int:
    return 24 * 24 * 25 * c1 + 8 * 8 * 25 * c1 * c2 + 16 * c2 * f1 + f1 * classes


class TinyUserCNN(torch.nn.Module):
    """A user's CNN for 3x32x32 inputs, saved whole with ``torch.save`` by the ``--model-file``
    tests (it lives here so that the pickle can find its class): conv-BN-ReLU-pool, conv-ReLU-pool,
    flatten, a hidden linear layer and the classifier."""

    def __init__(self, classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        nn = torch.nn
        self.features = nn.Sequential(nn.Conv2d(in_channels, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                                      nn.MaxPool2d(2), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8 * 8 * 8, 16), nn.ReLU(), nn.Linear(16, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def randomise_batchnorms(net: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial batch-norm statistics and affine parameters, so that a switch on the wrong
    side of a batch-norm shows."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) * 2 - 1)
            m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)


def tiny_data(name, data_dir=None, val_size=5000, seed=0, download=True):
    """``load_data`` on a tiny fake data set (160 train, 40 test, 40 validation), for patching."""
    from pyro_dirichlet_prune.data import load_data

    return load_data(name, data_dir, 40, seed, download, fake_sizes=(160, 40))


def tiny_lenet(batch: int, seed: int = 0):
    """A LeNet5 of widths 2-3-4-2 with weights scaled up 3x (so that switches matter), in eval
    mode, and a random minibatch ``(x, y)`` of ``batch`` MNIST-shaped inputs."""
    from pyro_dirichlet_prune.models import build_model

    torch.manual_seed(seed)
    net = build_model("lenet5", widths=(2, 3, 4, 2))
    for p in net.parameters():
        p.data.mul_(3.0)
    net.eval()
    return net, torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))


def ctrl_c_after_the_first(real_collect, calls: list, counts=lambda label: True):
    """A ``jobs.collect`` in which Ctrl-C lands in the main thread, while it collects, just after
    the first result that ``counts`` is handed over (saved), once the second job has started
    (``calls`` holds a job's arguments when it starts); only once, so that a resumed run goes
    through. Raised there rather than sent as SIGINT from a job's thread: such a signal reached
    the main thread late in loaded full-suite runs."""
    import time

    interrupted = []

    def collect(client, pending, on_result):
        def on_result_then_interrupt(label, result):
            on_result(label, result)
            if counts(label) and not interrupted:
                interrupted.append(label)
                deadline = time.monotonic() + 300
                while len(calls) < 2 and time.monotonic() < deadline:
                    time.sleep(0.01)
                raise KeyboardInterrupt

        real_collect(client, pending, on_result_then_interrupt)

    return collect
