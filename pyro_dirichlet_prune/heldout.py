"""Held-out measures of a fitted switch posterior (``compare-guides``): the switched network at
the posterior mean (a plug-in), and the posterior predictive under draws from the guide.

The plug-in cannot tell an over-confident guide from a good one: both put the network at the
same mean. The posterior predictive, p(y | x) = E_q[p(y | x, s)], estimated from S draws as the
log pointwise predictive density lppd = (1/N) sum_n log (1/S) sum_s p(y_n | x_n, s_s), pays for
draws that stray from the data, so a guide too wide, or centred wrong, scores lower.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from .data import Split, minibatches
from .inference.arviz_data import guide_draws
from .models import SwitchedNetwork
from .models.common import evaluating
from .models.switched import switch_site
from .training import evaluate


def evaluate_at_mean(switched: SwitchedNetwork, means: dict[str, torch.Tensor], factor: dict[str, float],
                     split: Split) -> dict[str, float]:
    """Error and mean negative log-likelihood of the switched network with s_l = E_q[s_l]."""
    with switched.scaled({k: (factor[k] * v).float() for k, v in means.items()}):
        return evaluate(switched, split)


def heldout_at_mean(switched: SwitchedNetwork, means: dict[str, torch.Tensor], factor: dict[str, float],
                    split: Split, schedule: str) -> tuple[dict[str, float], dict[str, dict[str, float]] | None]:
    """Held-out error and NLL at the posterior mean of the model that was fitted: every layer
    switched at once for a joint fit; for a layer-by-layer fit each layer alone (returned per
    layer as well), averaged over layers."""
    if schedule == "joint":
        return evaluate_at_mean(switched, means, factor, split), None
    by_layer = {k: evaluate_at_mean(switched, {k: v}, factor, split) for k, v in means.items()}
    return {key: float(np.mean([m[key] for m in by_layer.values()])) for key in ("error", "nll")}, by_layer


@torch.no_grad()
def predictive_check(switched: SwitchedNetwork, draws: dict[str, torch.Tensor], split: Split, schedule: str,
                     batch_size: int = 1000) -> tuple[dict[str, float], dict[str, dict[str, float]] | None]:
    """Held-out posterior predictive of the model that was fitted, from S draws per layer
    (``draws[l]``: ``(S, D_l)``, the scales the layer's output is multiplied by, draw by draw):
    ``{"lppd": (1/N) sum_n log (1/S) sum_s p(y_n | x_n, s_s), "error": error of the averaged
    probabilities}``. Joint: every layer at its draw s together; layer by layer: each layer
    alone (returned per layer as well), averaged over layers."""
    def check(layers: Sequence[str]) -> dict[str, float]:
        count = len(draws[layers[0]])
        lppd, wrong, n = 0.0, 0, 0
        for x, y, *_ in minibatches(split, batch_size):
            logp = []
            for s in range(count):
                with switched.scaled({k: draws[k][s].float() for k in layers}):
                    logp.append(torch.log_softmax(switched(x).double(), 1))
            pred = torch.logsumexp(torch.stack(logp), 0) - math.log(count)
            lppd += float(pred.gather(1, y[:, None]).sum())
            wrong += int((pred.argmax(1) != y).sum())
            n += len(y)
        return {"lppd": lppd / n, "error": wrong / n}

    with evaluating(switched):
        if schedule == "joint":
            return check(list(draws)), None
        by_layer = {k: check([k]) for k in draws}
    return {key: float(np.mean([m[key] for m in by_layer.values()])) for key in ("lppd", "error")}, by_layer


def predictive_scales(fit, factor: dict[str, float], count: int, seed: int) -> dict[str, torch.Tensor]:
    """``count`` draws s ~ q per layer as the scales of ``predictive_check``: factor_l · s_l on the
    frozen network; for a fit whose weights learned, s_l / E_q[s_l] on the fitted network (which
    has c_l · E_q[s_l] folded in)."""
    sampled = guide_draws(fit.model, fit.guide, num_samples=count, seed=seed)
    draws = {layer: torch.from_numpy(sampled[switch_site(layer)]) for layer in fit.model.layers}
    if fit.learns_weights:
        means = fit.posterior_means()
        return {k: v / means[k].double() for k, v in draws.items()}
    return {k: factor[k] * v for k, v in draws.items()}
