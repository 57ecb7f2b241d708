"""Fitting a data set's images to the input size a network was built for.

VGG-16 and the wide residual networks are CIFAR networks, built for 32x32 images: five 2x2
poolings take a 28x28 image to nothing. MNIST and Fashion-MNIST go into them zero-padded to
32x32, two pixels of background on each side, as LeNet-5 was first fed MNIST. The padding is
the raw pixel value 0 (black, the background of both data sets), which after the per-channel
normalisation of ``data.normalisation`` is ``-mean / std``.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import torch
import torch.nn.functional as F

from .data import DataBundle, Split, normalisation


def pad_images(data: DataBundle, size: int) -> DataBundle:
    """``data`` with every image of every split zero-padded to ``size`` x ``size`` (raw pixel 0,
    module docstring), the extra rows and columns split evenly between the two sides (the odd
    one at the bottom and right). Images already of that size are left as they are; ``size``
    below the images' own is a ``ValueError``."""
    if isinstance(size, bool) or not isinstance(size, int):
        raise TypeError(f"size must be an int, got {type(size).__name__}")
    _, h, w = data.input_shape
    if size < max(h, w):
        raise ValueError(f"size {size} is smaller than {data.name}'s {h}x{w} images")
    if size == h == w:
        return data
    mean, std = normalisation(data.name)
    top, left = (size - h) // 2, (size - w) // 2
    pads = (left, size - w - left, top, size - h - top)

    def pad(split: Split) -> Split:  # channel by channel: each has its own background value
        x = torch.cat([F.pad(split.x[:, c:c + 1], pads, value=-m / s) for c, (m, s) in enumerate(zip(mean, std))], 1)
        return Split(x, split.y)

    return dataclasses.replace(data, train=pad(data.train), val=pad(data.val), test=pad(data.test),
                               input_shape=(data.input_shape[0], size, size))


def fit_to_network(data: DataBundle, input_shape: Sequence[int]) -> DataBundle:
    """``data`` padded to the square ``input_shape`` a network records (``pad_images``) where
    that is larger than its images (e.g. Fashion-MNIST for a VGG-16 trained at 32x32); as it is
    otherwise, the caller's check of the two shapes then telling any mismatch."""
    size = int(input_shape[-1])
    _, h, w = data.input_shape
    if len(input_shape) == 3 and input_shape[-2] == size and size > max(h, w):
        return pad_images(data, size)
    return data
