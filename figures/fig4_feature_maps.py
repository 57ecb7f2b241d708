"""Fig. 4 of Adamczewski & Park (2021): feature maps of the first convolution of the pre-trained
LeNet-5 for a few test images, for its three most important channels and its least important one
by the switch posterior mean E_q[s] of that layer.

    python figures/fig4_feature_maps.py --dataset fashion-mnist --posterior runs/prune/posterior.json \\
        --out fig4.png

``--posterior`` is the ``posterior.json`` of a ``dirichlet-prune prune`` run (per layer a
``"mean"`` list); without it the switches are fitted afresh (default ``SwitchConfig``). The maps
shown are ReLU(conv1(x)), what the next layer sees.
"""
from __future__ import annotations

import argparse
import sys
import dataclasses
import json
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from pyro_dirichlet_prune.data import DATASETS, Split, load_data  # noqa: E402
from pyro_dirichlet_prune.errors import UserError  # noqa: E402
from pyro_dirichlet_prune.models.checkpoint import load_checkpoint, shipped_checkpoint  # noqa: E402
from pyro_dirichlet_prune.models.switch_points import switch_points  # noqa: E402


def first_layer_maps(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """ReLU of the output of the first switch point's hooked module: (B, C, H, W)."""
    point = switch_points(net)[0]
    seen: list[torch.Tensor] = []
    handle = point.hooked.register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    try:
        with torch.no_grad():
            net.eval()(x)
    finally:
        handle.remove()
    return torch.relu(seen[0])


def read_means(path: str | Path, layer: str, width: int) -> torch.Tensor:
    """The posterior mean of ``layer`` from a prune run's ``posterior.json``."""
    try:
        post = json.loads(Path(path).read_text())
        mean = torch.tensor(post[layer]["mean"], dtype=torch.float64)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path} holds no posterior mean of layer {layer} ({type(exc).__name__})") from None
    if mean.shape != (width,):
        raise UserError(f"{path}: layer {layer} has {mean.numel()} means, the network {width} channels")
    return mean


def fit_means(net: nn.Module, train: Split, seed: int) -> dict[str, torch.Tensor]:
    """E_q[s_l] of a fresh switch fit with the default ``SwitchConfig``."""
    import copy

    from pyro_dirichlet_prune.inference.svi import SwitchConfig, fit_switches
    from pyro_dirichlet_prune.models.switched import SwitchedNetwork

    switched = SwitchedNetwork(copy.deepcopy(net))
    fit = fit_switches(switched, train, dataclasses.replace(SwitchConfig(), seed=seed))
    return fit.posterior_means()


def plot_feature_maps(net: nn.Module, images: torch.Tensor, labels: Sequence[int], mean: torch.Tensor,
                      path: str | Path, title: str) -> Path:
    """Rows: images; columns: the input, the three channels of highest posterior mean, the one of
    lowest."""
    order = sorted(range(mean.numel()), key=lambda j: (-float(mean[j]), j))
    chosen = [(f"#{r + 1}", order[r]) for r in range(min(3, len(order) - 1))] + [("least", order[-1])]
    maps = first_layer_maps(net, images)
    d = mean.numel()
    fig, axes = plt.subplots(len(images), 1 + len(chosen), figsize=(1.9 * (1 + len(chosen)), 2.0 * len(images) + 0.6),
                             squeeze=False)
    for i in range(len(images)):
        ax = axes[i][0]
        ax.imshow(images[i, 0].numpy(), cmap="gray")
        ax.set_ylabel(f"test image {i}\n(label {int(labels[i])})", fontsize=8)
        if i == 0:
            ax.set_title("input", fontsize=9)
        for c, (rank, ch) in enumerate(chosen, 1):
            ax = axes[i][c]
            ax.imshow(maps[i, ch].numpy(), cmap="viridis")
            if i == 0:
                ax.set_title(f"{rank}: channel {ch}\nD·E[s]={d * float(mean[ch]):.2f}", fontsize=9)
            if i == len(images) - 1:
                ax.set_xlabel("x (pixels)", fontsize=8)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=DATASETS, default="mnist", help="test images from (default mnist)")
    ap.add_argument("--data-dir", default=None, help="folder in torchvision's layout (default $DATA_DIR, else ./data)")
    ap.add_argument("--checkpoint", default=None, help="pre-trained network (default: the LeNet-5 shipped for --dataset)")
    ap.add_argument("--posterior", default=None,
                    help="posterior.json of a prune run of this network (default: fit the switches afresh)")
    ap.add_argument("--val-size", type=int, default=5000,
                    help="validation examples split off the training set, as for the shipped checkpoints; a fresh "
                         "fit uses the rest (default 5000)")
    ap.add_argument("--images", type=int, default=3, help="how many test images, the first ones (default 3)")
    ap.add_argument("--seed", type=int, default=0, help="seed of a fresh switch fit (default 0)")
    ap.add_argument("--max-train-examples", type=int, default=None,
                    help="train a fresh switch fit on the first N training examples only (quick runs)")
    ap.add_argument("--out", default="fig4_feature_maps.png", help="PNG to write (default fig4_feature_maps.png)")
    args = ap.parse_args(argv)
    ckpt = args.checkpoint or shipped_checkpoint("lenet5", args.dataset)
    if ckpt is None:
        raise UserError(f"no LeNet-5 ships for {args.dataset}; pass --checkpoint")
    net, _ = load_checkpoint(ckpt)
    layer = switch_points(net)[0]
    if args.posterior:  # checked before the data are loaded
        mean, source = read_means(args.posterior, layer.name, layer.width), Path(args.posterior).name
    data = load_data(args.dataset, args.data_dir, val_size=args.val_size)
    if not args.posterior:
        train = data.train
        if args.max_train_examples:
            train = Split(train.x[: args.max_train_examples], train.y[: args.max_train_examples])
        mean, source = fit_means(net, train, args.seed)[layer.name], f"fresh switch fit, seed {args.seed}"
    n = max(1, min(args.images, len(data.test)))
    title = (f"{args.dataset}: {layer.name} feature maps, the 3 most and the least important channel "
             f"by posterior mean ({source})")
    path = plot_feature_maps(net, data.test.x[:n], data.test.y[:n].tolist(), mean, args.out, title)
    print(path)
    return path


if __name__ == "__main__":
    try:
        main()
    except UserError as exc:
        sys.exit(f"{Path(__file__).name}: error: {exc}")
