"""What a ``prune`` run leaves besides its report: the pruned network, the posterior (JSON and
figure), an autoguide's parameters, and the table of where the switches sat."""
from __future__ import annotations

from pathlib import Path
import torch

from .data import DataBundle
from .inference.posterior import SwitchPosterior
from .inference.svi import SwitchFit, guide_parameters
from .models.checkpoint import save_checkpoint, save_module_checkpoint
from .models.switch_points import SwitchPoint
from .plots import plot_fit, plot_posterior
from .prune_config import PruneConfig
from .prune_step import PruneResult
from .pruning.cutoff import arch_string
from .report import write_json



def point_table(net: torch.nn.Module, points: list[SwitchPoint]) -> list[dict]:
    """Where every switch sits, for the report."""
    names = {m: n for n, m in net.named_modules()}
    return [{"name": p.name, "layer": names.get(p.module), "hooked": names.get(p.hooked), "width": p.width}
            for p in points]


def save_outputs(tmp: Path, cfg: PruneConfig, ckpt: Path, label: str, data: DataBundle, points: list[SwitchPoint],
                 fit: SwitchFit, post: SwitchPosterior, means: dict, prob_below: dict, result: PruneResult,
                 units: dict[str, list[int]], keep: dict[str, list[int]]) -> None:
    """The pruned network, the posterior (JSON and figure) and an autoguide's parameters.
    ``units``: per layer, the index in the original network of every unit of the network the
    posterior describes (after rounds of pruning, a subset); ``keep``: the kept units as such
    original indices."""
    pruned = result.net
    meta = {"base_checkpoint": str(ckpt), "kept": keep, "test_error": result.finetuned["test"]["error"]}
    if cfg.model_file is None:
        save_checkpoint(tmp / "pruned.pt", pruned, cfg.model, cfg.dataset, data.num_classes, data.input_shape, meta=meta)
    else:
        save_module_checkpoint(tmp / "pruned.pt", pruned, cfg.dataset, data.num_classes, data.input_shape,
                               [p.name for p in points], meta=meta)
    posterior = {
        layer: {
            **({"concentration": fit.concentrations[layer].tolist()} if layer in fit.concentrations else {}),
            "mean": means[layer].tolist(),
            "lower": post.lower[layer].tolist(),
            "upper": post.upper[layer].tolist(),
            "prob_below_tau": prob_below[layer].tolist(),
            "units": units[layer],
            "kept": keep[layer],
        }
        for layer in means
    }
    write_json(tmp / "posterior.json", posterior)
    plot_posterior(post, tmp / "posterior.png", result.keep,
                   title=f"{label} on {cfg.dataset}: switch posterior ({post.guide}), kept {arch_string(keep)}")
    plot_fit(fit.losses, fit.stages, fit.convergence, tmp / "fit.png",
             title=f"{label} on {cfg.dataset}: switch learning ({post.guide})")
    if not fit.concentrations:  # an autoguide: keep its fitted parameters too
        write_json(tmp / "guide_params.json", guide_parameters(fit.guide))
