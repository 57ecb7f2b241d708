"""Data sets held in memory as normalised tensors, with a seeded validation split.

Supported: ``mnist``, ``fashion-mnist`` and ``cifar10`` through ``torchvision.datasets``
(downloaded when online), Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package
(``/usr/share/datasets/fashion-mnist``) when offline, and ``fake-mnist`` / ``fake-cifar10``
built from ``torchvision.datasets.FakeData`` for runs that need no data at all.
"""
from __future__ import annotations

import functools

import gzip
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from .errors import UserError

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

# (torchvision class name, per-channel mean, per-channel std, input shape, classes)
_SPECS = {
    "mnist": ("MNIST", (0.1307,), (0.3081,), (1, 28, 28), 10),
    "fashion-mnist": ("FashionMNIST", (0.2860,), (0.3530,), (1, 28, 28), 10),
    "cifar10": ("CIFAR10", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), (3, 32, 32), 10),
    "fake-mnist": (None, (0.5,), (0.25,), (1, 28, 28), 10),
    "fake-cifar10": (None, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), (3, 32, 32), 10),
}
DATASETS = tuple(_SPECS)


@dataclass
class Split:
    """Normalised images ``x`` (N, C, H, W) float32 and labels ``y`` (N,) int64."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass
class DataBundle:
    """Train / validation / test splits of one data set. The validation split is drawn from
    the training set; every choice made during a run uses it, the test set is only reported."""

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    input_shape: tuple[int, int, int]
    source: str


def default_data_dir() -> Path:
    """``$DATA_DIR`` if set, else ``./data``."""
    return Path(os.environ.get("DATA_DIR", "data"))


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 8:
        raise UserError(f"{path} is not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _idx_files(directory: Path) -> tuple[np.ndarray, ...] | None:
    """The four IDX files of an MNIST-like data set in ``directory`` (plain or gzipped), as
    torchvision keeps them (``MNIST/raw``) and Debian ships Fashion-MNIST; None if one is missing."""
    names = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    paths = []
    for n in names:
        for candidate in (directory / n, directory / f"{n}.gz"):
            if candidate.exists():
                paths.append(candidate)
                break
        else:
            return None
    return tuple(_read_idx(p) for p in paths)


def _torchvision_raw(name: str, root: Path, download: bool) -> tuple[np.ndarray, ...]:
    import torchvision

    cls = getattr(torchvision.datasets, _SPECS[name][0])
    train = cls(root=str(root), train=True, download=download)
    test = cls(root=str(root), train=False, download=download)

    def arrays(ds):
        data = ds.data.numpy() if isinstance(ds.data, torch.Tensor) else np.asarray(ds.data)
        targets = ds.targets.numpy() if isinstance(ds.targets, torch.Tensor) else np.asarray(ds.targets)
        return data, targets

    return (*arrays(train), *arrays(test))


@functools.lru_cache(maxsize=4)
def _fake_raw(name: str, num_train: int, num_test: int) -> tuple[np.ndarray, ...]:
    """FakeData's images and labels (generated once per process: the callers copy them)."""
    import torchvision

    shape = _SPECS[name][3]
    out = []
    # FakeData seeds item i with i + random_offset: disjoint offset ranges keep the test
    # images out of the training set. The data do not depend on the split seed.
    for size, offset in ((num_train, 0), (num_test, num_train)):
        ds = torchvision.datasets.FakeData(
            size=size, image_size=shape, num_classes=_SPECS[name][4], random_offset=offset
        )
        items = [ds[i] for i in range(size)]
        imgs = np.stack([np.asarray(img) for img, _ in items])
        labels = np.asarray([int(label) for _, label in items])
        out += [imgs, labels]
    return tuple(out)


def _to_split(images: np.ndarray, labels: np.ndarray, mean, std) -> Split:
    x = torch.from_numpy(np.array(images, copy=True)).float().div_(255.0)
    if x.dim() == 3:
        x = x.unsqueeze(1)
    elif x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.permute(0, 3, 1, 2).contiguous()
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return Split((x - m) / s, torch.as_tensor(np.array(labels, copy=True), dtype=torch.long))


def load_data(
    name: str,
    data_dir: str | os.PathLike | None = None,
    val_size: int | float = 5000,
    seed: int = 0,
    download: bool = True,
    fake_sizes: tuple[int, int] = (2000, 500),
) -> DataBundle:
    """Load a data set into memory and split ``val_size`` examples (a count, or a fraction of
    the training set; 0 for no validation split) off the training set with a permutation
    seeded by ``seed``.

    Where the data are looked for: ``data_dir`` (default ``$DATA_DIR``, else ``./data``) in
    torchvision's layout; for Fashion-MNIST also ``data_dir/fashion-mnist`` and Debian's
    ``/usr/share/datasets/fashion-mnist``; then a torchvision download into ``data_dir`` when
    ``download``. An explicit ``data_dir`` that does not exist is an error (no download into a
    mistyped path). Raises ``UserError`` naming every place looked at when nothing is found.
    """
    if name not in _SPECS:
        raise UserError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    tv_name, mean, std, shape, classes = _SPECS[name]
    if tv_name is None:
        raw = _fake_raw(name, *fake_sizes)
        source = f"torchvision.datasets.FakeData({fake_sizes[0]}+{fake_sizes[1]})"
    else:
        root = Path(data_dir) if data_dir is not None else default_data_dir()
        if data_dir is not None and not root.is_dir():
            raise UserError(f"data directory {root} does not exist")
        raw, source, looked = None, None, [str(root / tv_name / "raw")]
        if shape[0] == 1 and (root / tv_name / "raw").is_dir():
            # read torchvision's IDX files directly: importing torchvision alone takes 3-4 s
            raw = _idx_files(root / tv_name / "raw")
            source = f"torchvision {tv_name} at {root}" if raw is not None else None
        if raw is None:
            try:
                raw = _torchvision_raw(name, root, download=False)
                source = f"torchvision {tv_name} at {root}"
            except (RuntimeError, FileNotFoundError, OSError):
                pass
        if raw is None and name == "fashion-mnist":
            for d in (root / "fashion-mnist", DEBIAN_FASHION_MNIST):
                looked.append(str(d))
                if d.is_dir() and (found := _idx_files(d)) is not None:
                    raw, source = found, f"IDX files at {d}"
                    break
        download_error = ""
        if raw is None and download:
            try:
                raw = _torchvision_raw(name, root, download=True)
                source = f"torchvision {tv_name}, downloaded to {root}"
            except Exception as exc:  # no network, server down, ...
                first = str(exc).splitlines()[0][:120] if str(exc) else ""
                download_error = f"; download failed ({type(exc).__name__}: {first})"
        if raw is None:
            hint = " or `apt-get install dataset-fashion-mnist`" if name == "fashion-mnist" else ""
            raise UserError(
                f"no {name} data found (looked in {', '.join(looked)}{download_error}); "
                f"point data_dir to a folder in torchvision's layout, set $DATA_DIR, run once online{hint}"
            )
    xtr, ytr, xte, yte = raw
    train_all = _to_split(xtr, ytr, mean, std)
    test = _to_split(xte, yte, mean, std)
    if tuple(train_all.x.shape[1:]) != shape:
        raise UserError(f"{name}: images of shape {tuple(train_all.x.shape[1:])}, expected {shape}")
    n = len(train_all)
    n_val = int(round(val_size * n)) if isinstance(val_size, float) else int(val_size)
    if not 0 <= n_val < n:
        raise UserError(f"validation size {val_size} leaves no training data (of {n})")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = perm[:n_val].sort().values, perm[n_val:].sort().values
    return DataBundle(
        name=name,
        train=Split(train_all.x[train_idx], train_all.y[train_idx]),
        val=Split(train_all.x[val_idx], train_all.y[val_idx]),
        test=test,
        num_classes=classes,
        input_shape=shape,
        source=source,
    )


def normalisation(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The per-channel ``(mean, std)`` that this package normalises ``name``'s images with (after
    scaling them to [0, 1]): what a network must have been trained on, e.g.
    ``transforms.Normalize(*normalisation("mnist"))``."""
    if name not in _SPECS:
        raise ValueError(f"name must be one of {', '.join(DATASETS)}, got {name!r}")
    return _SPECS[name][1], _SPECS[name][2]


def dataset_spec(name: str) -> tuple[tuple[int, int, int], int]:
    """``(input_shape, num_classes)`` of a data set, without loading it."""
    if name not in _SPECS:
        raise UserError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return _SPECS[name][3], _SPECS[name][4]


def random_translate(x: torch.Tensor, max_shift: int, generator: torch.Generator, mode: str = "replicate") -> torch.Tensor:
    """Shift every image by up to ``max_shift`` pixels in each direction, filling the uncovered
    border by repeating the edge pixels (``mode="replicate"``) or with zeros (``"constant"``:
    a random crop of the image padded by ``max_shift``, as the usual CIFAR augmentation)."""
    if max_shift <= 0:
        return x
    b, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (max_shift,) * 4, mode=mode)
    dy = torch.randint(0, 2 * max_shift + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * max_shift + 1, (b,), generator=generator)
    rows = (dy.view(b, 1, 1, 1) + torch.arange(h).view(1, 1, h, 1)).expand(b, c, h, padded.shape[3])
    cols = (dx.view(b, 1, 1, 1) + torch.arange(w).view(1, 1, 1, w)).expand(b, c, h, w)
    return padded.gather(2, rows).gather(3, cols)


def batches(
    split: Split,
    batch_size: int,
    shuffle: bool = True,
    generator: torch.Generator | None = None,
    augment_shift: int = 0,
    augment_flip: bool = False,
    order: torch.Tensor | None = None,
    start_batch: int = 0,
    augment_crop: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield ``(x, y, idx)`` minibatches; ``idx`` are the examples' indices in ``split``.

    Augmentation, in this order: a random translation by up to ``augment_shift`` pixels (edges
    repeated), a random crop of the image zero-padded by ``augment_crop`` pixels (zero is the
    data set's mean colour after normalisation), a horizontal flip with probability 1/2.

    ``order`` (default: a permutation drawn from ``generator``, or the identity when not
    ``shuffle``) and ``start_batch`` let an interrupted epoch continue where it stopped.
    """
    n = len(split)
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    if order is None:
        order = epoch_order(n, shuffle, generator)
    for start in range(start_batch * batch_size, n, batch_size):
        idx = order[start : start + batch_size]
        x = split.x[idx]
        if augment_shift:
            x = random_translate(x, augment_shift, generator)
        if augment_crop:
            x = random_translate(x, augment_crop, generator, mode="constant")
        if augment_flip:
            flip = torch.rand(x.shape[0], generator=generator) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
        yield x, split.y[idx], idx


def epoch_order(n: int, shuffle: bool, generator: torch.Generator) -> torch.Tensor:
    """The order of the examples in one epoch."""
    return torch.randperm(n, generator=generator) if shuffle else torch.arange(n)


def num_batches(split: Split, batch_size: int) -> int:
    return (len(split) + batch_size - 1) // batch_size


class SplitLoader:
    """A ``DataLoader``-like iterable over an in-memory ``Split``: each pass is one epoch of
    ``(x, y, idx)`` minibatches (``batches``), in an order drawn from ``generator`` at the start
    of the epoch, augmented from the same generator. It saves and restores its position
    (``state_dict`` / ``load_state_dict``), so an interrupted epoch continues where it stopped."""

    def __init__(self, split: Split, batch_size: int, shuffle: bool = True, generator: torch.Generator | None = None,
                 augment_shift: int = 0, augment_flip: bool = False, augment_crop: int = 0) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.split, self.batch_size, self.shuffle = split, batch_size, shuffle
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self.augment = {"augment_shift": augment_shift, "augment_flip": augment_flip, "augment_crop": augment_crop}
        self.order: torch.Tensor | None = None
        self.position = 0

    def __len__(self) -> int:
        return num_batches(self.split, self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        if self.order is None:
            self.order, self.position = epoch_order(len(self.split), self.shuffle, self.generator), 0
        for item in batches(self.split, self.batch_size, self.shuffle, self.generator, order=self.order,
                            start_batch=self.position, **self.augment):
            self.position += 1
            yield item
        self.order, self.position = None, 0

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "order": self.order, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.order, self.position = state["order"], state["position"]


def minibatches(data: Split | Iterable, batch_size: int) -> Iterable:
    """``data`` as minibatches: a ``Split`` in order, in batches of ``batch_size``; any other
    iterable of ``(x, y[, idx])`` minibatches (a ``DataLoader``) as it is."""
    return batches(data, batch_size, shuffle=False) if isinstance(data, Split) else data


def split_batch(batch) -> tuple:
    """A minibatch as ``(x, y)`` or ``(x, y, idx)``: a ``TypeError``/``ValueError`` naming ``data``
    unless ``x`` and ``y`` are tensors of as many examples and ``y`` holds integer class labels."""
    if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
        what = f"a {type(batch).__name__} of {len(batch)}" if isinstance(batch, (tuple, list)) else f"a {type(batch).__name__}"
        raise TypeError(f"data must yield (x, y) or (x, y, idx) batches (inputs, integer class labels and "
                        f"optionally the examples' indices), got {what}")
    x, y = batch[0], batch[1]
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError(f"data must yield tensors (x, y), got ({type(x).__name__}, {type(y).__name__})")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(f"data: labels y must be integer class indices, got dtype {y.dtype}")
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"data: labels y must be one class index per example, got shape {tuple(y.shape)} "
                         f"for inputs of shape {tuple(x.shape)}")
    return tuple(batch)


def check_labels(y: torch.Tensor, num_classes: int) -> None:
    """A ``TypeError``/``ValueError`` naming ``y`` unless it holds integer labels in 0..num_classes-1
    (the network's outputs)."""
    if not isinstance(y, torch.Tensor) or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(f"y: labels must be an integer tensor of class indices, got "
                        f"{y.dtype if isinstance(y, torch.Tensor) else type(y).__name__}")
    if not y.numel():
        return
    lo, hi = (int(v) for v in torch.aminmax(y))  # one pass over the labels, one sync
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"y: labels must be class indices in 0..{num_classes - 1} (the network has "
                         f"{num_classes} outputs), got values from {lo} to {hi}")


def resume_epoch(data: Iterable, skip: int, loader_state: dict | None, epoch_rng: torch.Tensor | None):
    """One pass over ``data`` as ``(x, y[, idx])`` tuples, continuing a saved position: a loader
    with ``load_state_dict`` is restored; any other is re-iterated from torch's generator state at
    the epoch start and the first ``skip`` batches are passed over."""
    if loader_state is not None and hasattr(data, "load_state_dict"):
        data.load_state_dict(loader_state)
        skip = 0
    elif skip and epoch_rng is not None:
        now = torch.get_rng_state()
        torch.set_rng_state(epoch_rng)  # the shuffle (drawn at the first batch) of the interrupted epoch
        it = iter(data)
        for _ in range(skip):
            next(it)
        torch.set_rng_state(now)
        for batch in it:
            yield split_batch(batch)
        return
    for batch in data:
        yield split_batch(batch)
