"""The frozen part of a network below one switch, computed once for a whole pass of passes.

While only layer l's switch moves (the quadratic settle of one layer, the other layers unswitched
or held at fixed scales), nothing the network computes before l's output depends on it: with
f = tail ∘ head, head(x) (layer l's output before its switch, and whatever else the layers after l
read, such as a residual branch's input) is the same in every pass over the data, and

    logits(x; s_l) = tail(c_l s_l ⊙ head_l(x), head_rest(x)).

``frozen_head`` traces the network with ``torch.fx``, splits its graph at the switched module's
call, and runs the head once over a ``Split``; ``FrozenHead`` then gives the tail's logits per
minibatch, with the switch of the current ``SwitchedNetwork.scaled`` context applied
(``SwitchedNetwork.apply_scale``: exactly what the point's forward hook does). The same arithmetic
as the whole network, minus the head's repeated work: on LeNet-5 the settle's full-data passes of
conv2, fc1 and fc2 skip the convolutions below them.

Where the split is not possible or not worth it, ``frozen_head`` returns None and the caller runs
the whole network: the network cannot be traced (data-dependent control flow), the switched module
is not called exactly once as a leaf of the trace, it carries forward hooks of its own, the network
is not on the CPU, or the head's values for the whole split would take more than ``max_bytes``
(LeNet-5's conv1 output for 55,000 examples: 1.3 GB; its convolution costs little anyway).
"""
from __future__ import annotations

from typing import Callable, Iterable, Iterator, Mapping

import torch
from torch import fx, nn

from ..data import Split, minibatches, split_batch
from ..models.common import evaluating
from ..models.switched import SwitchedNetwork

MAX_BYTES = 512 * 2 ** 20
"""The largest head cache ``frozen_head`` builds by default (bytes)."""


class FrozenHead:
    """The head's values for every example of a split (``frozen_head``), and the tail that turns
    a minibatch of them into logits under the network's current scales."""

    def __init__(self, network: SwitchedNetwork, layer: str, tail: fx.GraphModule, values: list[torch.Tensor],
                 split: Split) -> None:
        self.network, self.layer, self.tail, self.values = network, layer, tail, values
        self.x, self.y = split.x, split.y

    @property
    def nbytes(self) -> int:
        return sum(v.numel() * v.element_size() for v in self.values)

    def __len__(self) -> int:
        return len(self.y)

    def batches(self, batch_size: int) -> Iterator[tuple[tuple[torch.Tensor, ...], torch.Tensor]]:
        """``(values, y)`` minibatches in the split's order; ``values`` is what ``logits`` takes."""
        for a in range(0, len(self.y), batch_size):
            yield tuple(v[a:a + batch_size] for v in self.values), self.y[a:a + batch_size]

    def logits(self, values: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The network's logits on the examples whose head ``values`` are given, layer ``layer``'s
        output multiplied by its scale of the enclosing ``network.scaled`` context (the layers after
        it by theirs, through their hooks)."""
        switched, *rest = values
        return self.tail(self.network.apply_scale(self.layer, switched), *rest)

    def logits_at(self, x: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor | None:
        """The logits of minibatch ``x`` from the head's values, when ``x`` is rows ``idx`` of the
        split the head was computed on (checked: comparing costs far less than the head); None
        otherwise (no ``idx``, other or augmented inputs), and the caller runs the whole network."""
        if idx is None or x.shape[0] != idx.shape[0] or x.device != self.x.device:
            return None
        if not torch.equal(x, self.x[idx]):
            return None
        return self.logits(tuple(v[idx] for v in self.values))


class FrozenHeads:
    """Heads of ``network`` below each switch, on ``split``, the other switches off (the
    layer-by-layer schedule's stages), built when first asked for (``frozen_head``) and kept for
    later passes: switch learning's stage and then the settle of the same layer. At most
    ``max_total`` bytes are kept, the oldest dropped first; a layer whose head cannot be built
    (``frozen_head`` gives None) is asked about only once."""

    def __init__(self, network: SwitchedNetwork, split: Split, max_bytes: int = MAX_BYTES,
                 max_total: int = 2 * MAX_BYTES) -> None:
        self.network, self.split, self.max_bytes, self.max_total = network, split, max_bytes, max_total
        self._heads: dict[str, FrozenHead | None] = {}

    def get(self, layer: str) -> FrozenHead | None:
        if layer not in self._heads:
            head = frozen_head(self.network, layer, self.split, max_bytes=self.max_bytes)
            self._heads[layer] = head
            older = [k for k, v in self._heads.items() if v is not None and k != layer]
            while older and self.nbytes > self.max_total:
                self._heads[older.pop(0)] = None
            if self.nbytes > self.max_total:
                self._heads[layer] = None
        return self._heads[layer]

    @property
    def nbytes(self) -> int:
        """The bytes the kept heads hold."""
        return sum(v.nbytes for v in self._heads.values() if v is not None)


def _split(net: nn.Module, target: str) -> tuple[fx.GraphModule, fx.GraphModule] | None:
    """(head, tail) of ``net``'s traced graph at the one call of submodule ``target``: the head
    returns that call's output and every other value the rest of the graph reads (in that
    order); the tail takes them as placeholders and returns the network's output."""
    try:
        graph = fx.symbolic_trace(net).graph
    except Exception:  # noqa: BLE001 - any untraceable forward: no split
        return None
    calls = [n for n in graph.nodes if n.op == "call_module" and n.target == target]
    if len(calls) != 1:
        return None
    point = calls[0]
    after: set[fx.Node] = set()
    for node in graph.nodes:
        if any(a is point or a in after for a in node.all_input_nodes):
            after.add(node)
    output = next(n for n in graph.nodes if n.op == "output")
    if output not in after:
        return None
    frontier = [point] + [n for n in graph.nodes if n not in after and n is not point and n.op != "get_attr"
                          and any(n in u.all_input_nodes for u in after)]
    tail_graph = fx.Graph()
    mapping: dict[fx.Node, fx.Node] = {n: tail_graph.placeholder(f"head_{i}") for i, n in enumerate(frontier)}
    for node in graph.nodes:
        if node.op == "get_attr" and any(node in u.all_input_nodes for u in after):
            mapping[node] = tail_graph.node_copy(node, lambda a: mapping[a])
        elif node in after:
            mapping[node] = tail_graph.node_copy(node, lambda a: mapping[a])
    head_graph = fx.Graph()
    head_map: dict[fx.Node, fx.Node] = {}
    for node in graph.nodes:
        if node.op == "output":
            break
        head_map[node] = head_graph.node_copy(node, lambda a: head_map[a])
    head_graph.output(tuple(head_map[n] for n in frontier))
    head = fx.GraphModule(net, head_graph)
    head.graph.eliminate_dead_code()  # what only the tail computes
    head.recompile()
    return head, fx.GraphModule(net, tail_graph)


def frozen_head(network: SwitchedNetwork, layer: str, data: Split, others: Mapping[str, torch.Tensor] | None = None,
                batch_size: int = 256, max_bytes: int = MAX_BYTES) -> FrozenHead | None:
    """The head of ``network`` below switch point ``layer`` run once over ``data``, the other
    switch points at ``others`` (their scales, as ``SwitchedNetwork.scaled`` takes them; an entry
    for ``layer`` itself is ignored), in eval mode; None where the split is not possible or the
    cache would exceed ``max_bytes`` (module docstring)."""
    if not isinstance(network, SwitchedNetwork):
        raise TypeError(f"network must be a SwitchedNetwork, got {type(network).__name__}")
    points = {p.name: p for p in network.points}
    if layer not in points:
        raise ValueError(f"layer: no switch point named {layer!r}; the points are {', '.join(points)}")
    if not isinstance(data, Split) or len(data) == 0:
        return None
    if any(p.device.type != "cpu" for p in network.net.parameters()):
        return None
    hooked = points[layer].hooked
    if network.has_other_hooks(layer):  # they would not run on the cached output
        return None
    path = {id(m): n for n, m in network.net.named_modules()}.get(id(hooked))
    parts = _split(network.net, path) if path else None
    if parts is None:
        return None
    head, tail = parts
    scales = {k: v for k, v in (others or {}).items() if k != layer}
    with torch.no_grad(), evaluating(network), network.scaled(scales):
        probe = head(data.x[:1])
        if sum(v.numel() * v.element_size() for v in probe) * len(data) > max_bytes:
            return None
        chunks = [head(data.x[a:a + batch_size]) for a in range(0, len(data), batch_size)]
    values = [torch.cat([c[i] for c in chunks]) for i in range(len(probe))]
    return FrozenHead(network, layer, tail, values, data)


def logit_batches(network: SwitchedNetwork, layer: str, data: FrozenHead | Split | Iterable, batch_size: int,
                  max_examples: int | None = None) -> Iterator[tuple[Callable[[], torch.Tensor], torch.Tensor]]:
    """``(forward, y)`` per minibatch of ``data`` (a ``FrozenHead`` of ``network`` below switch
    ``layer``, a ``Split`` in order, or an iterable of ``(x, y[, idx])`` minibatches), at most
    ``max_examples`` examples in all: ``forward()`` is the network's logits on the minibatch under
    the enclosing ``scaled`` context, from the head's values for a ``FrozenHead``, from the whole
    network otherwise."""
    head = data if isinstance(data, FrozenHead) else None
    if head is not None and (head.layer != layer or head.network is not network):
        raise ValueError(f"data: a FrozenHead below {head.layer!r} of another network or layer, not below {layer!r}")
    source = head.batches(batch_size) if head is not None else (split_batch(b)[:2] for b in minibatches(data, batch_size))
    seen = 0
    for x, y in source:
        if max_examples is not None:
            if seen >= max_examples:
                return
            keep = max_examples - seen
            x, y = (tuple(v[:keep] for v in x) if head is not None else x[:keep]), y[:keep]
        seen += len(y)
        yield (lambda x=x: head.logits(x)) if head is not None else (lambda x=x: network(x)), y
