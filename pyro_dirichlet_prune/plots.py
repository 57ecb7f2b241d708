"""Figures of a run (matplotlib, drawn off-screen)."""
from __future__ import annotations

import os
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .inference.posterior import SwitchPosterior  # noqa: E402


def plot_posterior(post: SwitchPosterior, path: str | os.PathLike, kept: Mapping[str, Sequence[int]] | None = None,
                   title: str = "") -> None:
    """One panel per layer: units sorted by posterior mean of D·s (1 = the uniform prior mean),
    with their marginal credible intervals; kept units in blue, removed units in red."""
    layers = list(post.means)
    fig, axes = plt.subplots(1, len(layers), figsize=(3.6 * len(layers), 3.4), squeeze=False)
    for ax, layer in zip(axes[0], layers):
        mean = post.means[layer].double()
        d = mean.numel()
        order = sorted(range(d), key=lambda j: -float(mean[j]))
        m = [d * float(mean[j]) for j in order]
        lo = [d * float(post.lower[layer][j]) for j in order]
        hi = [d * float(post.upper[layer][j]) for j in order]
        keep = set(kept[layer]) if kept and layer in kept else set(range(d))
        colors = ["tab:blue" if j in keep else "tab:red" for j in order]
        x = list(range(1, d + 1))
        ax.vlines(x, lo, hi, colors=colors, alpha=0.6, linewidth=1.2)
        ax.scatter(x, m, c=colors, s=12, zorder=3)
        ax.axhline(1.0, color="gray", linestyle=":", linewidth=1)
        ax.set_title(f"{layer} ({d} units, {len(keep)} kept)")
        ax.set_xlabel("unit, sorted by posterior mean")
        ax.set_ylabel(f"D·s, mean and {int(round(100 * post.level))}% interval")
    fig.suptitle(title or f"switch posterior ({post.guide} guide{'' if post.exact else ', Monte Carlo'})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
