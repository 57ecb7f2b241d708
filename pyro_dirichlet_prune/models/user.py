"""Checks on a user's network (``prune --model-file``): its input shape and its outputs."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..errors import UserError


def parse_input_shape(text: str) -> tuple[int, ...]:
    """``"3,32,32"`` → ``(3, 32, 32)``: one to three positive integers (channels first, no
    batch dimension); anything else is a ``UserError``."""
    parts = [t.strip() for t in str(text).replace("x", ",").split(",")]
    try:
        shape = tuple(int(t) for t in parts)
    except ValueError:
        shape = ()
    if not 1 <= len(shape) <= 3 or any(s < 1 for s in shape):
        raise UserError(f"input_shape must be positive integers separated by commas, e.g. 3,32,32; got {text!r}")
    return shape


@torch.no_grad()
def check_model_io(net: nn.Module, input_shape: Sequence[int], num_classes: int, what: str = "the model") -> None:
    """Run ``net`` (in eval mode) on two zero inputs of ``input_shape`` and require logits of
    shape ``(2, num_classes)``; raises a one-line ``UserError`` otherwise."""
    shape = (2, *input_shape)
    was = net.training
    net.eval()
    try:
        out = net(torch.zeros(shape))
    except Exception as exc:
        first = str(exc).splitlines()[0][:160] if str(exc) else ""
        raise UserError(f"{what} does not run on inputs of shape {shape}: {type(exc).__name__}: {first}") from None
    finally:
        net.train(was)
    if not isinstance(out, torch.Tensor):
        raise UserError(f"{what} returns a {type(out).__name__}, not a tensor of class scores")
    if tuple(out.shape) != (2, num_classes):
        raise UserError(f"{what} returns outputs of shape {tuple(out.shape)} for inputs of shape {shape}; "
                        f"expected (2, {num_classes}) class scores for the data set's {num_classes} classes")
