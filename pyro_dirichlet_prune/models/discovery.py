"""Find the prunable layers of any ``torch.nn.Module`` and where their switches sit.

``discover_switch_points(net, input_shape)`` traces ``net`` with Torch-Pruning's dependency
graph and returns a ``SwitchPoint`` for every ``nn.Conv2d`` / ``nn.Linear`` layer whose output
units can be removed on their own, such that removing units is exactly the same as zeroing
them at the switch (what ``pruning.surgery.verify_surgery`` checks after every pruning):

* a layer whose pruning group (the tensors Torch-Pruning must slice together with its output
  units) holds the output units of another conv/linear layer is left out. This is how residual
  additions (``x + f(x)``, the outputs of a ResNet block and of its shortcut), multiplicative
  gates (squeeze-and-excitation) and depthwise convolutions tie layers together; such layers
  get no switch at all (a switch shared by the tied layers is not offered). A layer whose
  outputs are only *concatenated* with others (``torch.cat``) is independent: Torch-Pruning
  maps its units to their positions in the concatenation;
* the layer producing the network output (the classifier) is left out, as is any layer whose
  units reach the output without passing through another conv/linear layer;
* the switch of a layer followed by a batch-norm sits after that batch-norm (``hook_module``
  is the batch-norm), since removing a unit removes its batch-norm channel as well and a
  batch-norm maps a zero input to a non-zero output; a switch before the batch-norm would not
  be the function of the pruned network (and in training mode the normalisation would undo
  it). If the units reach the next layers both through and around a batch-norm, through two
  batch-norms, or through one whose channels are not exactly the layer's units (a
  concatenation before it), the layer is left out;
* between the switch and the next conv/linear layers a zeroed unit must stay zero: ReLU-like
  activations, pooling, means, products, flattening and concatenation are allowed; any other
  operation (a sigmoid, an addition of a constant, a layer or group norm, a split) leaves the
  layer out. Grouped convolutions, layers called more than once and linear layers applied to
  sequences are left out too.

``layers=[...]`` names the layers to switch instead (module names as in
``net.named_modules()``); a name that is unknown, not a conv/linear layer, or not prunable by
the rules above is a ``UserError`` that says why.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.ops import OPTYPE

from ..errors import UserError
from .common import evaluating
from .points import SwitchPoint

LAYER_TYPES = (nn.Conv2d, nn.Linear)

# Autograd nodes (names lower-cased, without the trailing ``Backward<n>``) of operations that map
# a zero channel to a zero channel.
ZERO_PRESERVING = (
    "relu", "hardtanh", "leakyrelu", "elu", "gelu", "silu", "mish", "hardswish", "tanh",
    "maxpool", "avgpool", "adaptiveavgpool", "adaptivemaxpool", "mean", "sum", "amax", "max",
    "mul", "div", "clone", "tocopy", "squeeze", "unsqueeze", "upsample", "alias",
)


@dataclass
class LayerFinding:
    """What discovery found about one conv/linear layer: its switch point, or why it has none."""

    name: str
    module: nn.Module
    hook_module: nn.Module | None = None
    reason: str | None = None

    @property
    def prunable(self) -> bool:
        return self.reason is None


def _zero_preserving(op_name: str) -> bool:
    name = op_name.lower().split("backward")[0]
    return any(name.startswith(p) for p in ZERO_PRESERVING)


def _out_fn(module: nn.Module):
    return tp.prune_conv_out_channels if isinstance(module, nn.Conv2d) else tp.prune_linear_out_channels


def _width(module: nn.Module) -> int:
    return module.out_channels if isinstance(module, nn.Conv2d) else module.out_features


def _calls(net: nn.Module, example: torch.Tensor) -> tuple[list[nn.Module], dict[nn.Module, int], dict[nn.Module, int]]:
    """The conv/linear layers in the order ``forward`` first calls them, with call counts and output ranks."""
    order, count, rank = [], {}, {}

    def hook(module, inputs, output):
        if module not in count:
            order.append(module)
            count[module] = 0
        count[module] += 1
        rank[module] = output.dim() if isinstance(output, torch.Tensor) else -1

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, LAYER_TYPES)]
    try:
        with torch.no_grad():
            net(example)
    finally:
        for h in handles:
            h.remove()
    return order, count, rank


def _walk(graph: tp.DependencyGraph, module: nn.Module) -> tuple[nn.Module | None, str | None]:
    """Follow the layer's units forward to the next conv/linear layers: the batch-norm to hook
    (or None) and the reason the layer cannot be switched exactly (or None)."""
    root = graph.module2node[module]
    if not root.outputs:
        return None, "produces the network output"
    norms: set[nn.Module] = set()
    around_norm = False
    stack = [(n, False, None) for n in root.outputs]  # (node, after a batch-norm, last non-zero-preserving op)
    seen = set()
    while stack:
        node, after_norm, bad_op = stack.pop()
        if (node, after_norm, bad_op) in seen:
            continue
        seen.add((node, after_norm, bad_op))
        kind = node.type
        if kind in (OPTYPE.CONV, OPTYPE.LINEAR):
            if bad_op is not None:
                return None, f"its units pass through {bad_op}, which does not keep a removed unit at zero"
            around_norm = around_norm or not after_norm
            continue
        if kind == OPTYPE.BN:
            if after_norm:
                return None, "its units pass through two batch-norms before the next layer"
            norms.add(node.module)
            after_norm, bad_op = True, None
        elif kind == OPTYPE.OUTPUT or not node.outputs:
            return None, "its units reach the network output"
        elif kind == OPTYPE.ELEMENTWISE:
            op = getattr(node.module, "_grad_fn", "an unknown operation")
            if not _zero_preserving(str(op)):
                bad_op = str(op)
        elif kind not in (OPTYPE.RESHAPE, OPTYPE.CONCAT, OPTYPE.PRELU):
            return None, f"its units pass through a {kind.name.lower()} operation"
        stack.extend((n, after_norm, bad_op) for n in node.outputs)
    if not norms:
        return None, None
    if len(norms) > 1:
        return None, "its units feed more than one batch-norm"
    (norm,) = norms
    if around_norm:
        return None, "its units reach the next layers both through and around a batch-norm"
    if norm.num_features != _width(module):
        return None, "the batch-norm after it also normalises other layers' units"
    return norm, None


def _analyse(graph: tp.DependencyGraph, module: nn.Module, names: dict[nn.Module, str]) -> tuple[nn.Module | None, str | None]:
    if isinstance(module, nn.Conv2d) and module.groups != 1:
        return None, "it is a grouped convolution"
    group = graph.get_pruning_group(module, _out_fn(module), idxs=list(range(_width(module))))
    tied, grouped = [], []
    for dep, _ in group:
        target = dep.target.module
        if isinstance(target, nn.modules.conv._ConvNd) and target is not module and target.groups != 1:
            grouped.append(names.get(target, "?"))
        elif (target is not module and isinstance(target, (nn.modules.conv._ConvNd, nn.Linear))
                and graph.is_out_channel_pruning_fn(dep.handler)):
            tied.append(names.get(target, type(target).__name__))
    reasons = []
    if tied:
        reasons.append(f"its units are tied to those of {_shown(tied)} (a residual addition or another shared use)")
    if grouped:
        reasons.append(f"its units feed the grouped convolution {_shown(grouped)}")
    if reasons:
        return None, "; ".join(reasons)
    return _walk(graph, module)


def _shown(names: list[str]) -> str:
    """Up to three distinct names, sorted, then ``...``."""
    distinct = sorted(set(names))
    return ", ".join(distinct[:3]) + (", ..." if len(distinct) > 3 else "")


def analyse_layers(net: nn.Module, input_shape: Sequence[int]) -> list[LayerFinding]:
    """Every conv/linear layer of ``net`` that ``forward`` uses, in call order, with its switch
    placement or the reason it cannot be pruned on its own (module docstring).

    Raises ``UserError`` when ``net`` does not run on inputs of shape ``input_shape`` or
    Torch-Pruning cannot trace it."""
    requires_grad = {p: p.requires_grad for p in net.parameters()}
    example = torch.zeros(1, *input_shape)
    names = {m: n for n, m in net.named_modules()}
    with evaluating(net):
        try:
            order, count, rank = _calls(net, example)
            # The dependency graph is traced through autograd: every parameter must require grad.
            for p in requires_grad:
                p.requires_grad_(True)
            with torch.enable_grad():
                graph = tp.DependencyGraph().build_dependency(net, example_inputs=example, verbose=False)
            findings = []
            for module in order:
                name = names.get(module, "")
                if not name:
                    continue
                if count[module] > 1:
                    reason, hook = "it is called more than once in forward", None
                elif isinstance(module, nn.Linear) and rank[module] != 2:
                    reason, hook = "it is applied to inputs of more than two dimensions", None
                elif module not in graph.module2node:
                    reason, hook = "Torch-Pruning did not find it in the traced graph", None
                else:
                    hook, reason = _analyse(graph, module, names)
                findings.append(LayerFinding(name, module, hook, reason))
        except UserError:
            raise
        except Exception as exc:
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise UserError(f"could not trace {type(net).__name__} on inputs of shape {tuple(input_shape)}: "
                            f"{type(exc).__name__}: {first}") from None
        finally:
            for p, flag in requires_grad.items():
                p.requires_grad_(flag)
    return findings


def discover_switch_points(
    net: nn.Module, input_shape: Sequence[int], layers: Sequence[str] | None = None
) -> list[SwitchPoint]:
    """The switch points of ``net`` (module docstring), in the order ``forward`` calls the
    layers, each named by its module path; ``layers`` restricts them to the named layers,
    all of which must be prunable. Raises ``UserError`` when no layer (or a named one) qualifies."""
    findings = analyse_layers(net, input_shape)
    if layers is None:
        chosen = [f for f in findings if f.prunable]
        if not chosen:
            why = "; ".join(f"{f.name}: {f.reason}" for f in findings[:4])
            raise UserError(f"no layer of {type(net).__name__} can be pruned on its own ({why})")
    else:
        layers = list(layers)
        if not layers:
            raise UserError("no layers named")
        if len(set(layers)) != len(layers):
            raise UserError(f"layers named more than once in {layers}")
        by_name = {f.name: f for f in findings}
        modules = dict(net.named_modules())
        for name in layers:
            if name not in modules:
                raise UserError(f"no layer named {name!r} in {type(net).__name__}")
            if not isinstance(modules[name], LAYER_TYPES):
                raise UserError(f"layer {name!r} is a {type(modules[name]).__name__}, not a Conv2d or Linear layer")
            if name not in by_name:
                raise UserError(f"layer {name!r} is not used by {type(net).__name__}'s forward")
            if not by_name[name].prunable:
                raise UserError(f"layer {name!r} cannot be pruned on its own: {by_name[name].reason}")
        wanted = set(layers)
        chosen = [f for f in findings if f.name in wanted]
    return [SwitchPoint(f.name, f.module, f.hook_module) for f in chosen]


NOT_NAMED = "prunable, but not among the layers named"


def left_out_layers(net: nn.Module, input_shape: Sequence[int], points: Sequence[SwitchPoint]) -> dict[str, str]:
    """Every conv/linear layer that ``forward`` uses and that has no switch among ``points``,
    in call order, with the reason: why discovery cannot prune it on its own (module
    docstring), or ``NOT_NAMED`` for a prunable layer left out by the choice of layers."""
    switched = {p.module for p in points}
    return {f.name: f.reason or NOT_NAMED for f in analyse_layers(net, input_shape) if f.module not in switched}
