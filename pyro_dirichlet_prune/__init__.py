"""Dirichlet pruning of trained convolutional networks as a Pyro probabilistic program.

A session::

    model = SwitchModel(net, input_shape=(1, 28, 28), num_data=len(train_set))
    guide = DirichletGuide(model)                       # or AutoNormal(model), ...
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    for x, y in train_loader:
        svi.step(x, y)
    post = posterior_of(model, guide)                    # means, intervals, prob_below(tau)
    keep = uncertainty_cutoff(post, tau=0.5, delta=0.05)
    small = prune(net, keep, input_shape=(1, 28, 28))    # physical surgery
    finetune(small, train_loader, val_loader, epochs=40)

Every way to score units (posterior mean, P(D·s < tau), L1, L2, Fisher, random) is a ``Ranking``
of one registry: ``scores = get_ranking("l1")(net)``, ``keep = arch_cutoff(scores, "6-8-40-20")``.
``prune_and_finetune(net, keep, data, TrainConfig(...))`` is the prune → fine-tune → evaluate
path of every command.

More than one process: ``distributed`` (the same session under ``torchrun``: call
``distributed.init_from_env()`` first and give ``fit``/``finetune`` ``distributed.sharded(loader)``;
the gradients are averaged by DDP) and ``jobs`` (independent jobs, e.g. a search, on Dask).
"""
from ._openmp import set_spin_count

set_spin_count()  # before torch is imported: the command line's idle OpenMP threads spin briefly

from .allocator import retain_freed_memory  # noqa: E402
from .data import SplitLoader, normalisation
from .inference.convergence import ConvergenceRule
from .inference.elbo import MeanSwitchELBO
from .inference.fit import FitResult, FitStep, fit
from .inference.guides import DirichletGuide, LayerwiseGuide, ModuleLocal
from .inference.posterior import SwitchPosterior, estimate_elbo, posterior_of
from .metrics import count_macs, count_params
from .models import build_model, discover_switch_points, load_pretrained
from .models.discovery import left_out_layers
from .models.switch_points import SwitchPoint
from .models.switched import SwitchModel
from .pruning.budget import budget_cutoff
from .pruning.cutoff import arch_cutoff, rate_cutoff, uncertainty_cutoff
from .prune_step import PruneResult, prune_and_finetune
from .pruning.importance import PosteriorImportance
from .pruning.ranking import RANKINGS, FittedSwitches, Ranking, get_ranking
from .pruning.surgery import prune
from .training import TrainResult, evaluate, finetune

__version__ = "0.1.0"

__all__ = [
    "SwitchModel", "DirichletGuide", "LayerwiseGuide", "ModuleLocal", "MeanSwitchELBO",
    "fit", "FitResult", "FitStep", "ConvergenceRule", "posterior_of", "SwitchPosterior", "estimate_elbo",
    "uncertainty_cutoff", "budget_cutoff", "PosteriorImportance", "arch_cutoff", "rate_cutoff", "prune", "finetune", "evaluate",
    "TrainResult", "load_pretrained", "build_model", "discover_switch_points", "left_out_layers", "SwitchPoint", "normalisation",
    "SplitLoader", "count_macs", "count_params", "retain_freed_memory", "Ranking", "RANKINGS", "get_ranking",
    "FittedSwitches", "prune_and_finetune", "PruneResult", "__version__",
]
