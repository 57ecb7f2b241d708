"""Physical removal of units: a smaller network whose tensors really shrink.

Torch-Pruning's dependency graph finds every tensor coupled to a layer's output units (the
layer's own weight rows and bias, a following batch-norm, the next layer's input columns,
the flatten into the first linear layer) and slices them all consistently.
"""
from __future__ import annotations

import copy
from typing import Mapping, Sequence

import torch
import torch_pruning as tp
from torch import nn

from ..errors import NumericalError
from ..models.switch_points import SwitchPoint, check_input_shape, rebind, switch_points


def _prune_fn(module: nn.Module):
    if isinstance(module, nn.Conv2d):
        return tp.prune_conv_out_channels
    if isinstance(module, nn.Linear):
        return tp.prune_linear_out_channels
    raise TypeError(f"cannot prune units of {type(module).__name__}")


def mask_scales(points: Sequence[SwitchPoint], keep: Mapping[str, Sequence[int]]) -> dict[str, torch.Tensor]:
    """0/1 switch scales that zero the removed units: the masked network of a keep-set."""
    scales = {}
    for p in points:
        if p.name in keep:
            m = torch.zeros(p.width)
            m[list(keep[p.name])] = 1.0
            scales[p.name] = m
    return scales


def _points_of(copied: nn.Module, net: nn.Module, points: Sequence[SwitchPoint] | None,
               input_shape: Sequence[int]) -> list[SwitchPoint]:
    """The switch points of ``copied`` (a deep copy of ``net``): ``points`` of ``net`` moved onto
    it, or those it declares (or discovery finds) when ``points`` is None."""
    if points is not None:
        return rebind(points, net, copied)
    return switch_points(copied, input_shape)


def prune_units(
    net: nn.Module,
    keep: Mapping[str, Sequence[int]],
    input_shape: Sequence[int],
    points: Sequence[SwitchPoint] | None = None,
) -> nn.Module:
    """Return a copy of ``net`` in which layer l keeps only the units ``keep[l]``.

    The copy computes exactly what ``net`` computes with the removed units' outputs set to
    zero at their switch points (the masked network), as long as what follows maps zero to
    zero and removed units feed nothing else. ``points`` are the switch points of ``net``
    (default: the ones it declares, or the discovered ones).
    """
    pruned = copy.deepcopy(net)
    pruned.eval()
    points = {p.name: p for p in _points_of(pruned, net, points, input_shape)}
    check_keep(keep, {name: p.width for name, p in points.items()})
    # The dependency graph is traced through autograd, so a frozen copy must require grad
    # while it is built; the flags are restored afterwards.
    requires_grad = {n: p.requires_grad for n, p in pruned.named_parameters()}
    for p in pruned.parameters():
        p.requires_grad_(True)
    example = torch.zeros(1, *input_shape)
    graph = tp.DependencyGraph().build_dependency(pruned, example_inputs=example, verbose=False)
    for name, kept in keep.items():
        point = points[name]
        kept = sorted(set(int(i) for i in kept))
        remove = [j for j in range(point.width) if j not in set(kept)]
        if remove:
            group = graph.get_pruning_group(point.module, _prune_fn(point.module), idxs=remove)
            group.prune()
    for n, p in pruned.named_parameters():
        p.requires_grad_(requires_grad.get(n, True))
    return pruned


def check_keep(keep: Mapping[str, Sequence[int]], widths: Mapping[str, int]) -> None:
    """Raise ``TypeError``/``ValueError`` naming ``keep`` unless it maps prunable layers (of
    ``widths``) to non-empty collections of distinct unit indices within each layer."""
    if not isinstance(keep, Mapping):
        raise TypeError(f"keep must map layer names to kept unit indices, got {type(keep).__name__}")
    unknown = [k for k in keep if k not in widths]
    if unknown:
        raise ValueError(f"keep: no prunable layer named {', '.join(map(repr, unknown))}; "
                         f"the layers are {', '.join(widths)}")
    for name, kept in keep.items():
        try:
            indices = [int(i) for i in kept]
        except (TypeError, ValueError):
            raise TypeError(f"keep[{name!r}] must be a collection of unit indices, got {kept!r}") from None
        if not indices:
            raise ValueError(f"keep[{name!r}] is empty: a layer keeps at least one of its {widths[name]} units")
        if min(indices) < 0 or max(indices) >= widths[name]:
            raise ValueError(f"keep[{name!r}]: unit indices must lie in 0..{widths[name] - 1}, got {sorted(indices)}")


@torch.no_grad()
def verify_surgery(
    net: nn.Module,
    pruned: nn.Module,
    keep: Mapping[str, Sequence[int]],
    input_shape: Sequence[int],
    batch: int = 8,
    seed: int = 0,
    rtol: float = 1e-4,
    atol: float = 1e-5,
    points: Sequence[SwitchPoint] | None = None,
) -> float:
    """Check that ``pruned`` runs and equals the masked ``net`` on a random batch.

    Returns the largest absolute difference; raises ``NumericalError`` naming the cause when the
    pruned network fails, returns non-finite outputs, or computes another function (surgery
    missed a dependency, e.g. a size hard-coded in ``forward``). ``points`` as in ``prune_units``.
    """
    from ..models.switched import SwitchedNetwork

    x = torch.randn(batch, *input_shape, generator=torch.Generator().manual_seed(seed))
    was = pruned.training
    pruned.eval()
    try:
        out = pruned(x)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise NumericalError(
            f"the pruned network no longer runs on inputs of shape {tuple(input_shape)}: "
            f"{type(exc).__name__}: {first}"
        ) from None
    finally:
        pruned.train(was)
    if not torch.isfinite(out).all():
        raise NumericalError("the pruned network returns non-finite outputs")
    reference = copy.deepcopy(net).eval()
    switched = SwitchedNetwork(reference, _points_of(reference, net, points, input_shape))
    with switched.scaled(mask_scales(switched.points, keep)):
        expected = switched(x)
    diff = float((out - expected).abs().max())
    if not torch.allclose(out, expected, rtol=rtol, atol=atol):
        raise NumericalError(
            f"the pruned network differs from the masked network by up to {diff:.3g}: surgery missed a "
            f"dependency of layers {', '.join(keep)}"
        )
    return diff


def prune(net: nn.Module, keep: Mapping[str, Sequence[int]], input_shape: Sequence[int],
          points: Sequence[SwitchPoint] | None = None, verify: bool = True) -> nn.Module:
    """A physically smaller copy of ``net`` keeping the units ``keep[l]`` of every layer named
    (Torch-Pruning slices every coupled tensor: the layer, a following batch-norm, the next
    layers' inputs). With ``verify`` the copy is checked to compute what the masked network
    computes (``verify_surgery``). ``input_shape`` is the shape of one input, e.g. ``(1, 28, 28)``;
    ``points`` the network's switch points (default: declared or discovered, e.g. ``model.points``)."""
    if not isinstance(net, nn.Module):
        raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
    check_input_shape(net, input_shape)
    small = prune_units(net, keep, tuple(input_shape), points)
    if verify:
        verify_surgery(net, small, keep, tuple(input_shape), points=points)
    return small


@torch.no_grad()
def fold_scales(
    net: nn.Module,
    scales: Mapping[str, torch.Tensor],
    points: Sequence[SwitchPoint] | None = None,
    input_shape: Sequence[int] | None = None,
    weights: Mapping[str, torch.Tensor] | None = None,
) -> nn.Module:
    """A copy of ``net`` that computes what ``net`` computes with the output of switch point l
    multiplied channel-wise by ``scales[l]`` (a ``(D_l,)`` tensor): the scale is folded into the
    weight rows and bias of the hooked ``Conv2d``/``Linear``, or into the affine weight and bias
    of a hooked batch-norm (exact: an affine map's output times c is the map with its weights and
    bias times c). ``weights`` (by parameter name) replace the copy's parameters first, e.g. the
    point estimate of a model with learned weights. ``points``: the switch points of ``net``
    (default: declared, or discovered on ``input_shape``). ``net`` is not changed."""
    folded = copy.deepcopy(net)
    if weights is not None:
        params = dict(folded.named_parameters())
        unknown = [n for n in weights if n not in params]
        if unknown:
            raise ValueError(f"weights: no parameter named {unknown}")
        for name, value in weights.items():
            if value.shape != params[name].shape:
                raise ValueError(f"weights[{name!r}] has shape {tuple(value.shape)}, the network's is "
                                 f"{tuple(params[name].shape)}")
            params[name].copy_(value)
    found = {p.name: p for p in _points_of(folded, net, points, input_shape)}
    for name, scale in scales.items():
        if name not in found:
            raise ValueError(f"scales: no switch point named {name!r}")
        module = found[name].hooked
        scale = torch.as_tensor(scale).detach()
        if scale.shape != (found[name].width,):
            raise ValueError(f"scales[{name!r}] must have {found[name].width} entries, got shape {tuple(scale.shape)}")
        affine_bn = isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine
        if not (isinstance(module, (nn.Conv2d, nn.Linear)) or affine_bn):
            raise TypeError(f"switch point {name}: cannot fold a scale into {type(module).__name__} "
                            f"(a Conv2d, a Linear or an affine batch-norm)")
        target = module.weight
        scale = scale.to(device=target.device, dtype=target.dtype)
        target.mul_(scale.view(-1, *([1] * (target.dim() - 1))))
        if module.bias is not None:
            module.bias.mul_(scale)
    return folded
