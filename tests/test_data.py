"""Data: the seeded validation split (sizes, disjointness, determinism), minibatches and the
random-translation augmentation."""
from __future__ import annotations

import hashlib
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from pyro_dirichlet_prune.data import Split, batches, load_data, num_batches, random_translate
from pyro_dirichlet_prune.errors import UserError


def _rows(split: Split) -> Counter:
    """Multiset of (image bytes, label) of a split."""
    return Counter(
        hashlib.sha1(x.numpy().tobytes()).hexdigest() + f":{int(y)}" for x, y in zip(split.x, split.y)
    )


@pytest.fixture(scope="module")
def bundles(data_cfg):
    kw = dict(data_dir=data_cfg.data_dir) if data_cfg.data_dir else dict(fake_sizes=(600, 100))
    val = 1000 if data_cfg.data_dir else 150
    a = load_data(data_cfg.dataset, val_size=val, seed=0, **kw)
    b = load_data(data_cfg.dataset, val_size=val, seed=0, **kw)
    c = load_data(data_cfg.dataset, val_size=val, seed=1, **kw)
    return a, b, c, val


def test_split_sizes_and_types(bundles, data_cfg):
    a, _, _, val = bundles
    n_train_all = 60000 if data_cfg.data_dir else 600
    assert len(a.val) == val
    assert len(a.train) == n_train_all - val
    assert len(a.test) == (10000 if data_cfg.data_dir else 100)
    assert a.input_shape == (1, 28, 28) and a.num_classes == 10
    for s in (a.train, a.val, a.test):
        assert s.x.dtype == torch.float32 and s.y.dtype == torch.int64
        assert tuple(s.x.shape[1:]) == (1, 28, 28) and s.x.shape[0] == s.y.shape[0]
        assert int(s.y.min()) >= 0 and int(s.y.max()) <= 9


def test_split_is_disjoint_and_covers_training_set(bundles):
    a, _, c, _ = bundles
    tr, va = _rows(a.train), _rows(a.val)
    if sum(tr.values()) == len(tr) and sum(va.values()) == len(va):  # no duplicate rows at all
        assert not set(tr) & set(va)
    # train + val is the same multiset for every split seed (the seed only permutes)
    assert tr + va == _rows(c.train) + _rows(c.val)


def test_split_is_deterministic_by_seed(bundles):
    a, b, c, _ = bundles
    assert torch.equal(a.val.x, b.val.x) and torch.equal(a.val.y, b.val.y)
    assert torch.equal(a.train.y, b.train.y)
    assert not torch.equal(a.val.y, c.val.y) or not torch.equal(a.val.x, c.val.x)
    assert torch.equal(a.test.x, c.test.x), "the split seed must not change the test set"


def test_fractional_val_size(data_cfg):
    kw = dict(data_dir=data_cfg.data_dir) if data_cfg.data_dir else dict(fake_sizes=(600, 100))
    d = load_data(data_cfg.dataset, val_size=0.1, seed=0, **kw)
    n = 60000 if data_cfg.data_dir else 600
    assert len(d.val) == round(0.1 * n) and len(d.train) == n - len(d.val)


def test_mnist_normalisation(mnist_dir):
    """Normalised with MNIST's mean/std, the training pixels have mean ~0 and std ~1."""
    if mnist_dir is None:
        pytest.skip("real MNIST not available (needs $DATA_DIR or ../shared/data)")
    d = load_data("mnist", mnist_dir, val_size=5000)
    x = torch.cat([d.train.x, d.val.x])
    assert abs(float(x.mean())) < 1e-3
    assert float(x.std()) == pytest.approx(1.0, abs=1e-3)


def test_fake_mnist_test_set_is_not_training_data():
    """Test images must not be copies of training/validation images."""
    d = load_data("fake-mnist", val_size=50, fake_sizes=(300, 60))
    train = set(_rows(d.train)) | set(_rows(d.val))
    test = _rows(d.test)
    leaked = sum(1 for r in test if r in train)
    assert leaked == 0, f"{leaked} of {len(test)} fake-mnist test examples are also training examples"


def test_fake_mnist_split_seed_only_permutes():
    """Changing the split seed re-splits the same training set and keeps the test set."""
    a = load_data("fake-mnist", val_size=50, seed=0, fake_sizes=(200, 40))
    b = load_data("fake-mnist", val_size=50, seed=1, fake_sizes=(200, 40))
    assert _rows(a.train) + _rows(a.val) == _rows(b.train) + _rows(b.val)
    assert torch.equal(a.test.x, b.test.x)


def test_load_data_errors(tmp_path):
    with pytest.raises(UserError, match="unknown dataset"):
        load_data("imagenet")
    with pytest.raises(UserError, match="does not exist"):
        load_data("mnist", tmp_path / "nope", download=False)
    with pytest.raises(UserError, match="no mnist data"):
        load_data("mnist", tmp_path, download=False)
    for bad in (300, 1000, 1.0, -1):
        with pytest.raises(UserError, match="validation size"):
            load_data("fake-mnist", val_size=bad, fake_sizes=(300, 10))


def test_val_size_zero_means_no_validation_split():
    """``evaluate`` needs only the test set: ``val_size=0`` keeps the whole training set."""
    d = load_data("fake-mnist", val_size=0, fake_sizes=(300, 10))
    assert len(d.val) == 0 and len(d.train) == 300 and len(d.test) == 10


def test_batches_cover_every_example_once():
    split = Split(torch.arange(23.0).view(23, 1, 1, 1), torch.arange(23))
    seen = []
    for x, y, idx in batches(split, 5, shuffle=True, generator=torch.Generator().manual_seed(0)):
        assert torch.equal(split.x[idx], x) and torch.equal(split.y[idx], y)
        assert len(idx) <= 5
        seen += idx.tolist()
    assert sorted(seen) == list(range(23)) and seen != list(range(23))
    assert num_batches(split, 5) == 5
    ordered = [i for _, _, idx in batches(split, 5, shuffle=False) for i in idx.tolist()]
    assert ordered == list(range(23))


def test_random_translate_shift_zero_is_identity():
    x = torch.randn(4, 1, 28, 28)
    out = random_translate(x, 0, torch.Generator().manual_seed(0))
    assert torch.equal(out, x)


@pytest.mark.parametrize("shift", [1, 2, 3])
def test_random_translate_is_a_crop_of_the_padded_image(shift):
    """Every output is the replicate-padded image cropped at an offset (dy, dx) in [0, 2·shift]²,
    the shape is kept, and over many images every offset occurs."""
    torch.manual_seed(0)
    x = torch.randn(200, 2, 9, 11)
    out = random_translate(x, shift, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == x.dtype
    padded = F.pad(x, (shift,) * 4, mode="replicate")
    offsets = set()
    for i in range(x.shape[0]):
        matches = [
            (dy, dx)
            for dy in range(2 * shift + 1)
            for dx in range(2 * shift + 1)
            if torch.equal(out[i], padded[i, :, dy : dy + 9, dx : dx + 11])
        ]
        assert len(matches) == 1, f"image {i} is not a single crop of its padded image"
        offsets.add(matches[0])
    assert len(offsets) == (2 * shift + 1) ** 2
    again = random_translate(x, shift, torch.Generator().manual_seed(1))
    assert torch.equal(out, again)


def _write_idx(path, array) -> None:
    import numpy as np

    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.tobytes())


def test_idx_files_in_torchvisions_layout_load_as_torchvision_reads_them(tmp_path, monkeypatch):
    """MNIST-like data in torchvision's layout are read from their IDX files without importing
    torchvision; the images and labels are the ones torchvision's own dataset class reads."""
    import numpy as np
    import torchvision

    from pyro_dirichlet_prune import data as data_module

    g = np.random.default_rng(0)
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    arrays = {"train-images-idx3-ubyte": g.integers(0, 256, (30, 28, 28)),
              "train-labels-idx1-ubyte": g.integers(0, 10, 30),
              "t10k-images-idx3-ubyte": g.integers(0, 256, (12, 28, 28)),
              "t10k-labels-idx1-ubyte": g.integers(0, 10, 12)}
    for name, array in arrays.items():
        _write_idx(raw / name, array)

    def no_torchvision(*args, **kwargs):
        raise AssertionError("torchvision was asked")

    monkeypatch.setattr(data_module, "_torchvision_raw", no_torchvision)
    bundle = load_data("mnist", tmp_path, val_size=0)
    monkeypatch.undo()
    reference = [torchvision.datasets.MNIST(str(tmp_path), train=t, download=False) for t in (True, False)]
    for split, ds in zip((bundle.train, bundle.test), reference):
        pixels = (split.x[:, 0] * 0.3081 + 0.1307) * 255
        assert torch.allclose(pixels, ds.data.float(), atol=1e-3)
        assert torch.equal(split.y, ds.targets)
    assert bundle.source == f"torchvision MNIST at {tmp_path}"
