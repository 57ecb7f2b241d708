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


def plot_fit(losses: Sequence[float], stages: Sequence[Mapping], convergence: Mapping | None,
             path: str | os.PathLike, title: str = "") -> None:
    """How switch learning went, one column per stage: the loss (-ELBO estimate) of every step and
    its mean over the convergence rule's windows, and below it each active layer's total
    concentration phi_0 per window (log scale; for a Dirichlet guide). The title of each column
    says whether the stage converged, and a dashed line marks where."""
    traces = {s["stage"]: s for s in (convergence or {}).get("stages", [])}
    fig, axes = plt.subplots(2, max(len(stages), 1), figsize=(3.6 * max(len(stages), 1), 5.2), squeeze=False)
    start = 0
    for i, stage in enumerate(stages):
        top, bottom = axes[0][i], axes[1][i]
        steps = stage["steps"]
        own = list(losses[start:start + steps])
        start += steps
        label = "+".join(stage["layers"])
        top.plot(range(1, len(own) + 1), own, color="tab:gray", alpha=0.35, linewidth=0.7)
        record = traces.get(i, {})
        trace = record.get("trace", [])
        if trace:
            top.plot([e["step"] for e in trace], [e["loss"] for e in trace], "o-", color="tab:blue", markersize=3)
        for layer in stage["layers"]:
            points = [(e["step"], e["phi0"][layer]) for e in trace if layer in e.get("phi0", {})]
            if points:
                bottom.plot(*zip(*points), "o-", markersize=3, label=layer)
        if record.get("converged_at"):
            for ax in (top, bottom):
                ax.axvline(record["converged_at"], color="tab:green", linestyle="--", linewidth=1)
        state = "converged" if record.get("converged") else "not converged"
        top.set_title(f"{label}: {state}")
        top.set_ylabel("loss (-ELBO estimate)")
        bottom.set_xlabel("step of the stage")
        bottom.set_ylabel("phi_0 (window mean)")
        if bottom.lines:
            bottom.set_yscale("log")
            bottom.legend(fontsize=7)
    fig.suptitle(title or "switch learning")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
