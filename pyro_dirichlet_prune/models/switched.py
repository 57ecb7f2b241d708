"""The Pyro model of Dirichlet pruning.

For every prunable layer l with D_l units the model draws an importance switch

    s_l ~ Dirichlet(alpha0 · 1_{D_l})

and multiplies the layer's output channel-wise by c_l · s_l: with ``scale="simplex"`` (the
default, the paper's model) c_l is the ``gain`` (default 1), so the layer's output is shrunk by
1/D_l on average and the likelihood rewards moving the switch mass onto the units the network
needs; with ``scale="dim"`` c_l = D_l, whose prior mean leaves the pre-trained network unchanged.
The labels are

    y_n | x_n, s ~ Categorical(logits = f(x_n; W, c · s)),   n = 1..N,

inside ``pyro.plate("data", N, subsample=idx)``: a minibatch of size B is scaled by N/B, so the
ELBO is eq. 7 of Adamczewski & Park (2021):

    L(phi) = sum_n E_q[log p(y_n | x_n, s)] - sum_l KL(q(s_l) || Dir(alpha0 · 1)).

The network's weights W are frozen: the network stays a plain ``nn.Module`` and never enters
Pyro's param store (a ``PyroModule`` would turn them into trainable params). With
``weight_scale=sigma`` they are latent as well, W ~ Normal(W0, sigma^2) around the pre-trained
W0, with a point estimate in the guide, so the ELBO gains log p(W) (``models.weight_prior``).

Per-example sampling (``sampling="per-example"``) draws an independent switch s^(i) ~ q for
every example i of a minibatch of size B and scores the prior and guide densities of the B
draws with weight 1/B (``pyro.plate("switch_draws", B)`` under ``poutine.scale(1/B)``):

    (N/B) sum_i log p(y_i | x_i, s^(i)) + (1/B) sum_i [log p(s^(i)) - log q(s^(i))],

whose expectation is the same ELBO as one shared draw, since the expected log-likelihood is
linear in the examples; the B draws decorrelate the examples' terms and lower the variance.
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator, Mapping, Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn

from ..data import check_labels
from .discovery import discover_switch_points, left_out_layers
from .switch_points import SwitchPoint, check_input_shape, switch_points
from .weight_prior import WeightPrior

SWITCH_DTYPE = torch.float64
"""Switches are sampled and scored in float64: in float32, Dirichlet samples of small
concentrations underflow to the smallest float and their log-density is badly biased."""


SCALES = ("dim", "simplex")
SAMPLINGS = ("shared", "per-example")


@contextlib.contextmanager
def switch_draws(sampling: str, batch: int):
    """Context of the switch sites: nothing for one shared draw; for per-example sampling a
    plate of ``batch`` independent draws whose log-densities are averaged (weight 1/batch)."""
    if sampling == "shared":
        yield
    elif sampling == "per-example":
        with pyro.plate("switch_draws", batch), poutine.scale(scale=1.0 / batch):
            yield
    else:
        raise ValueError(f"unknown switch sampling {sampling!r}; choose one of {', '.join(SAMPLINGS)}")


def switch_site(layer: str) -> str:
    """Name of the sample site of a layer's switch."""
    return f"switch.{layer}"


class SwitchedNetwork(nn.Module):
    """A frozen network whose switch points multiply their outputs by given scales.

    ``with net.scaled({"conv1": scale}): net(x)`` multiplies the output of conv1 by
    ``scale`` (shape ``(D,)`` shared by the batch, or ``(B, D)`` per example); layers not
    named are left unchanged. The network is left as it was outside the context: its forward
    hooks are registered on entry and removed on exit, and its parameters stop requiring grad
    only inside (the weights are frozen while switches learn, and the flags come back as they
    were), so a network that was switched can be pickled, ``torch.save``d and trained as any
    other. The scales may live on the CPU while the network runs on a GPU (``forward``).
    """

    def __init__(self, net: nn.Module, points: Sequence[SwitchPoint] | None = None) -> None:
        super().__init__()
        self.net = net
        self.points = list(points) if points is not None else _points(net, None, None)
        names = [p.name for p in self.points]
        if len(set(names)) != len(names):
            raise ValueError(f"switch point names must be unique, got {names}")
        self._scales: dict[str, torch.Tensor] = {}
        self._depth = 0
        self._handles: list = []
        self._flags: list[tuple[nn.Parameter, bool]] = []

    @property
    def widths(self) -> dict[str, int]:
        return {p.name: p.width for p in self.points}

    def apply_scale(self, name: str, output: torch.Tensor) -> torch.Tensor:
        """``output`` of switch point ``name`` times its scale of the current ``scaled`` context
        (unchanged when it has none), broadcast over the batch and the spatial dimensions: what
        the point's forward hook returns. A caller that holds a point's output computed elsewhere
        (``inference.frozen_head``) switches it with this."""
        scale = self._scales.get(name)
        if scale is None:
            return output
        if scale.dtype != output.dtype or scale.device != output.device:
            scale = scale.to(device=output.device, dtype=output.dtype)
        if scale.dim() == 1:
            scale = scale.view(1, -1, *([1] * (output.dim() - 2)))
        else:
            scale = scale.view(scale.shape[0], -1, *([1] * (output.dim() - 2)))
        return output * scale

    def has_other_hooks(self, name: str) -> bool:
        """Whether the module switch point ``name`` multiplies carries forward hooks or pre-hooks
        other than this network's own switch hook (a user's, a probe's)."""
        module = next(p.hooked for p in self.points if p.name == name)
        own = {h.id for h in self._handles}
        return bool(module._forward_pre_hooks) or any(k not in own for k in module._forward_hooks)

    def _hook(self, name: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
            return None if name not in self._scales else self.apply_scale(name, output)

        return hook

    @contextlib.contextmanager
    def scaled(self, scales: Mapping[str, torch.Tensor]) -> Iterator["SwitchedNetwork"]:
        unknown = set(scales) - set(self.widths)
        if unknown:
            raise KeyError(f"no switch point named {sorted(unknown)}")
        previous = self._scales
        self._scales = dict(scales)
        self._enter()
        try:
            yield self
        finally:
            self._exit()
            self._scales = previous

    def _enter(self) -> None:
        """On the outermost entry: freeze the weights and register the hooks."""
        self._depth += 1
        if self._depth > 1:
            return
        self._flags = [(p, p.requires_grad) for p in self.net.parameters()]
        for p, _ in self._flags:
            p.requires_grad_(False)
        # prepended: the layer's own forward hooks (a user's, a feature-map probe) see the switched output
        self._handles = [p.hooked.register_forward_hook(self._hook(p.name), prepend=True) for p in self.points]

    def _exit(self) -> None:
        """On the outermost exit: remove the hooks and give the weights their flags back."""
        self._depth -= 1
        if self._depth > 0:
            return
        for h in self._handles:
            h.remove()
        self._handles = []
        for p, flag in self._flags:
            p.requires_grad_(flag)
        self._flags = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The network's output on the device of ``x``. A network moved to a GPU runs there
        while the switches, the data and Pyro stay on the CPU: the inputs are moved to the
        network's device and its outputs back."""
        device = next(iter(self.net.parameters()), x).device
        if device == x.device:
            return self.net(x)
        return self.net(x.to(device)).to(x.device)


def switch_factors(widths: Mapping[str, int], scale: str, gain: float = 1.0) -> dict[str, float]:
    """The constant c_l of each layer's multiplier c_l · s_l: ``gain`` for ``simplex``, D_l for ``dim``."""
    if not (gain > 0 and math.isfinite(gain)):
        raise ValueError(f"switch gain must be positive and finite, got {gain}")
    if scale == "dim" and gain != 1.0:
        raise ValueError("a switch gain other than 1 needs scale 'simplex' (dim multiplies by D_l · s_l)")
    return {n: float(d) if scale == "dim" else float(gain) for n, d in widths.items()}


class SwitchModel:
    """The switch model ``model(x, y=None, idx=None)`` of Dirichlet pruning (module docstring), a
    Pyro model for ``pyro.infer.SVI`` with any guide of its sites ``switch.<layer>``.

    Args:
        net: the pre-trained network, or a ``SwitchedNetwork`` to share with another model. The
            model never changes it: its weights are frozen and its layers hooked only while the
            model runs (``SwitchedNetwork``), so ``net`` and the networks pruned from it keep no
            hook and their ``requires_grad`` flags.
        input_shape: the shape of one input, e.g. ``(1, 28, 28)``; needed to discover the
            prunable layers of a network that does not declare them (``switch_points()``).
        num_data: N, the size of the training set the minibatches are scaled to.
        layers: the layers to switch, by name (default: all that the network declares or that
            discovery finds), or ``SwitchPoint`` objects.
        alpha0: the concentration of the symmetric Dirichlet prior of every switch.
        scale: ``"simplex"`` (output times ``gain · s_l``, the paper's) or ``"dim"`` (times ``D_l · s_l``).
        gain: the constant c of ``simplex``; it sets how many units carry the switch mass
            (docs/switch-gain.md). Must be 1 with ``scale="dim"``.
        sampling: ``"shared"`` (one switch draw per minibatch) or ``"per-example"``.
        weight_scale: None (the default, the paper's model): the network's weights are frozen.
            A number sigma: the weights are latent too, W ~ Normal(W0, sigma^2) around the
            pre-trained W0 (``models.weight_prior``), and the guide holds their point estimate;
            the network is run on the sampled weights with ``torch.func.functional_call`` and is
            itself never changed.

    ``model.switching(["conv1"])`` switches only the layers named, the others staying the
    pre-trained network: this is how layers are learned one at a time (``fit(schedule=
    "sequential")``); guides of this package sample the switches of the active layers only.
    The minibatch size comes from ``x``; ``idx`` (the examples' indices) is optional.
    """

    def __init__(
        self,
        net: nn.Module,
        input_shape: Sequence[int] | None = None,
        num_data: int | None = None,
        *,
        layers: Sequence[str | SwitchPoint] | None = None,
        alpha0: float = 0.5,
        scale: str = "simplex",
        gain: float = 1.0,
        sampling: str = "shared",
        weight_scale: float | None = None,
    ) -> None:
        if not isinstance(net, nn.Module):
            raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
        if sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {', '.join(SAMPLINGS)}, got {sampling!r}")
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {', '.join(SCALES)}, got {scale!r}")
        if isinstance(alpha0, bool) or not isinstance(alpha0, (int, float)) or not (alpha0 > 0 and math.isfinite(alpha0)):
            raise ValueError(f"alpha0 must be a positive number, got {alpha0!r}")
        if isinstance(num_data, bool) or not isinstance(num_data, int):
            raise TypeError(f"num_data must be an int (the size of the training set), got {num_data!r}")
        if num_data < 1:
            raise ValueError(f"num_data must be positive, got {num_data}")
        if input_shape is not None:
            input_shape = check_input_shape(net.net if isinstance(net, SwitchedNetwork) else net, input_shape)
        if isinstance(net, SwitchedNetwork):
            network = net
        else:
            network = SwitchedNetwork(net, _points(net, input_shape, layers))
        names = [p.name if isinstance(p, SwitchPoint) else p for p in layers] if layers is not None else list(network.widths)
        unknown = [n for n in names if n not in network.widths]
        if unknown or len(set(names)) != len(names) or not names:
            raise ValueError(f"layers must be distinct switch points of the network ({', '.join(network.widths)}), "
                             f"got {names}")
        self.network = network
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        self.alpha0 = float(alpha0)
        self.num_data = int(num_data)
        self.layers = names
        self.widths = {n: network.widths[n] for n in names}
        self.scale = scale
        self.sampling = sampling
        self.gain = float(gain)
        self.factors = switch_factors(self.widths, scale, gain)
        self.active_layers = list(names)
        self._head = None
        self._prior = {n: torch.full((d,), self.alpha0, dtype=SWITCH_DTYPE) for n, d in self.widths.items()}
        self.weight_scale = None if weight_scale is None else float(weight_scale)
        self.weight_prior = None if weight_scale is None else WeightPrior(network.net, weight_scale)

    @property
    def points(self) -> list[SwitchPoint]:
        """The switch points of the switched layers."""
        return [p for p in self.network.points if p.name in self.widths]

    @property
    def net(self) -> nn.Module:
        """The pre-trained network."""
        return self.network.net

    def left_out_layers(self) -> dict[str, str]:
        """Every conv/linear layer of the network that has no switch in this model, in call
        order, with the reason (``models.discovery.left_out_layers``: tied to another layer by a
        residual addition, feeding a grouped convolution, producing the output, ..., or prunable
        but not among the ``layers`` named). Needs the model's ``input_shape``."""
        if self.input_shape is None:
            raise ValueError("input_shape: the model was made without one; give SwitchModel(net, input_shape, ...) "
                             "the shape of one input to trace the network")
        return left_out_layers(self.net, self.input_shape, self.points)

    def prior(self, layer: str) -> dist.Dirichlet:
        """p(s_l) = Dirichlet(alpha0 · 1_{D_l})."""
        return dist.Dirichlet(self._prior[layer], validate_args=False)

    @contextlib.contextmanager
    def switching(self, layers: Sequence[str]) -> Iterator["SwitchModel"]:
        """Switch only ``layers`` inside the context (the others are the pre-trained network)."""
        layers = list(layers)
        unknown = [n for n in layers if n not in self.widths]
        if unknown or not layers:
            raise ValueError(f"layers must be switched layers of the model ({', '.join(self.widths)}), got {layers}")
        previous = self.active_layers
        self.active_layers = [n for n in self.layers if n in set(layers)]
        try:
            yield self
        finally:
            self.active_layers = previous

    @contextlib.contextmanager
    def computing_below(self, head) -> Iterator["SwitchModel"]:
        """Inside, while ``head.layer`` is the only active layer, a minibatch that is rows ``idx``
        of the split ``head`` was computed on runs only the network above that layer, from the
        head's values (an ``inference.frozen_head.FrozenHead``: the same logits, the layers below
        computed once); any other minibatch runs the whole network. None: nothing changes."""
        previous, self._head = self._head, head
        try:
            yield self
        finally:
            self._head = previous

    def restricted(self, layers: Sequence[str]) -> "SwitchModel":
        """The same model with only ``layers`` switched, sharing this model's network."""
        return SwitchModel(self.network, self.input_shape, self.num_data, layers=layers, alpha0=self.alpha0,
                           scale=self.scale, gain=self.gain, sampling=self.sampling, weight_scale=self.weight_scale)

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor | None = None, idx: torch.Tensor | None = None
    ) -> torch.Tensor:
        scales = {}
        with switch_draws(self.sampling, x.shape[0]):
            for name in self.active_layers:
                s = pyro.sample(switch_site(name), self.prior(name))
                scales[name] = (self.factors[name] * s).to(torch.get_default_dtype())
        weights = self.weight_prior.sample() if self.weight_prior is not None else None
        with self.network.scaled(scales):
            head = self._head if self._head is not None and self.active_layers == [self._head.layer] else None
            if weights is None:
                logits = head.logits_at(x, idx) if head is not None else None
                if logits is None:
                    logits = self.network(x)
            else:
                logits = torch.func.functional_call(self.network, {f"net.{k}": v for k, v in weights.items()}, (x,))
        if y is not None:
            check_labels(y, logits.shape[-1])
        if idx is None:
            idx = torch.arange(x.shape[0])
        with pyro.plate("data", self.num_data, subsample=idx):
            pyro.sample("obs", dist.Categorical(logits=logits, validate_args=False), obs=y)
        return logits


def _points(net: nn.Module, input_shape: Sequence[int] | None, layers) -> list[SwitchPoint]:
    """The switch points of ``net`` (``switch_points``: declared, or discovered on inputs of
    ``input_shape``); ``SwitchPoint`` objects in ``layers`` are used as given, and the layers of a
    network that declares none are discovered among those named."""
    if layers is not None and all(isinstance(p, SwitchPoint) for p in layers):
        return list(layers)
    if layers is None or hasattr(net, "switch_points") or input_shape is None:
        return switch_points(net, input_shape)
    return discover_switch_points(net, input_shape, [p for p in layers if isinstance(p, str)])
