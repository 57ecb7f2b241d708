"""Your own guide, compared with the Dirichlet guide by ``compare-guides`` from Python.

The guide here is written by hand: a logistic-normal switch posterior, q(s_l) = the image of
Normal(m_l, diag(sigma_l^2)) on R^(D_l - 1) under the stick-breaking map onto the simplex (the map
Pyro's own autoguides use), one independent factor per layer. A ``GuideBuilder`` tells the library
how to build it for a switch model; from then on it goes wherever a guide name goes: here,
``run_compare`` fits it and the Dirichlet guide with the same seeds on the same network and data,
prunes each posterior to the same widths, fine-tunes, and tabulates the ELBO, the held-out
likelihood at the posterior mean and the test error.

    python examples/your_own_guide.py --data-dir DATA [--examples 5000] [--out runs/your-guide]
"""
from __future__ import annotations

import argparse
import os
import tempfile

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.transforms import StickBreakingTransform
from pyro.nn import PyroModule, PyroParam
from torch.distributions import constraints

from pyro_dirichlet_prune import ModuleLocal, SwitchModel
from pyro_dirichlet_prune.compare import CompareConfig, run_compare
from pyro_dirichlet_prune.inference.builders import GuideBuilder
from pyro_dirichlet_prune.inference.svi import SwitchConfig
from pyro_dirichlet_prune.models.switched import SWITCH_DTYPE, switch_site
from pyro_dirichlet_prune.training import TrainConfig


class LogisticNormalGuide(PyroModule):
    """q(s_l) = StickBreaking#Normal(m_l, sigma_l) for every switched layer of ``model``; it samples
    the model's active layers only, so it can be fitted one layer at a time."""

    follows_active_layers = True

    def __init__(self, model: SwitchModel, init_scale: float = 0.1) -> None:
        super().__init__()
        self.model = model  # a SwitchModel is not a torch module: it is not registered
        self.layers = list(model.widths)
        for i, (layer, d) in enumerate(model.widths.items()):
            setattr(self, f"loc_{i}", PyroParam(torch.zeros(d - 1, dtype=SWITCH_DTYPE)))
            setattr(self, f"scale_{i}", PyroParam(torch.full((d - 1,), init_scale, dtype=SWITCH_DTYPE),
                                                  constraint=constraints.positive))

    def forward(self, x=None, y=None, idx=None) -> dict[str, torch.Tensor]:
        out = {}
        for layer in self.model.active_layers:
            i = self.layers.index(layer)
            base = dist.Normal(getattr(self, f"loc_{i}"), getattr(self, f"scale_{i}")).to_event(1)
            q = dist.TransformedDistribution(base, [StickBreakingTransform()])
            out[layer] = pyro.sample(switch_site(layer), q)
        return out


class LogisticNormal(GuideBuilder):
    """How the library builds the guide: module-local parameters (``ModuleLocal``), so that two
    fits in one process never share them; fitted with Trace_ELBO (the default ``loss``)."""

    name = "logistic-normal"

    def build(self, model: SwitchModel, cfg: SwitchConfig):
        return ModuleLocal(LogisticNormalGuide(model))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=os.environ.get("DATA_DIR", "data"))
    ap.add_argument("--examples", type=int, default=5000, help="training examples used (default 5000)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--finetune-epochs", type=int, default=1)
    ap.add_argument("--out", default=None, help="output folder (default: a temporary one)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    pyro.set_rng_seed(0)

    cfg = CompareConfig(dataset="mnist", data_dir=args.data_dir, guides=["dirichlet", LogisticNormal()],
                        seeds=args.seeds, switch=SwitchConfig(batch_size=256), arch="6-8-40-20",
                        finetune=TrainConfig(epochs=args.finetune_epochs, lr=2e-3, augment_shift=2),
                        elbo_particles=4, elbo_batches=4, predictive_draws=8, max_train_examples=args.examples)
    out = args.out or tempfile.mkdtemp(prefix="your-guide-")
    report = run_compare(cfg, out, overwrite=True)
    for name, row in report["summary"]["table"].items():
        print(f"{name:16s} ELBO {row['elbo']['mean']:10.1f}  held-out NLL at the mean {row['heldout_nll']['mean']:.4f}  "
              f"held-out lppd under 8 draws {row['predictive_lppd']['mean']:.4f}  "
              f"test error after fine-tuning {row['test_error_finetuned']['mean']:.4f}")
    print(f"table: {out}/table.md")


if __name__ == "__main__":
    main()
