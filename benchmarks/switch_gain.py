"""What sets the widths the uncertainty cut-off keeps: the switch model's gain, not the data.

The paper's model multiplies a layer's output by the switch itself, ``s_l`` on the simplex, so
the layer's output shrinks by about 1/k when the mass sits on k units; ``--switch-scale dim``
multiplies by ``D_l · s_l``. Both are members of one family, output × ``c_l · s_l`` with a
constant gain ``c_l``. This benchmark fits the switch posterior of the shipped LeNet-5 (the
default recipe: Dirichlet guide, one epoch per layer, layers one at a time) under

* a fixed gain ``c`` for every layer (``--switch-gain c``; ``c = 1`` is the paper's model), and
* a gain learned with the concentrations, ``c_l = pyro.param(...)`` started at ``D_l`` (an
  empirical-Bayes scale, under which the likelihood sees only the ratios between units),

and records the architecture the uncertainty cut-off P(D_l·s_lj < tau) >= 1 - delta keeps, with
its MACs and params, for each tau. With ``--ft-epochs N`` every kept architecture within
``--budget MACS,PARAMS`` is also fine-tuned with the recipe of ``cutoff_selection.py`` (the
pipeline's) and its validation and test errors are recorded.

    python benchmarks/switch_gain.py --data-dir ../shared/data --seeds 0 1 2 --jobs 2
    python benchmarks/switch_gain.py --gains 0.5 4 8 --taus 1 1.5 --ft-epochs 40 \\
        --budget 169320,7554 --jobs 2 --out benchmarks/results/switch_gain_finetuned.json

The learned gain is defined here, not in the library: it exists to test a diagnosis.
"""
from __future__ import annotations

import argparse
import time

import pyro
import torch
from pyro.distributions import constraints

import cutoff_selection  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from pyro_dirichlet_prune import DirichletGuide, SplitLoader, SwitchModel, fit, posterior_of
from pyro_dirichlet_prune.jobs import dask_client, in_this_process, job_threads
from pyro_dirichlet_prune.inference.svi import SwitchConfig
from pyro_dirichlet_prune.metrics import count_macs, count_params
from pyro_dirichlet_prune.models import SwitchedNetwork
from pyro_dirichlet_prune.models.switched import SWITCH_DTYPE
from pyro_dirichlet_prune.pruning.cutoff import arch_string, uncertainty_keep
from pyro_dirichlet_prune.pruning.surgery import prune_units
from pyro_dirichlet_prune.report import versions, write_json



class LearnedGainSwitchModel(SwitchModel):
    """The switch model with output × c_l · s_l, c_l a positive ``pyro.param`` started at D_l and
    fitted with the guide (a fixed gain is the library's ``SwitchModel(gain=...)``)."""

    def __call__(self, x, y=None, idx=None):
        self.factors = {
            n: pyro.param(f"gain.{n}", torch.tensor(float(d), dtype=SWITCH_DTYPE), constraint=constraints.positive)
            for n, d in self.widths.items()
        }
        return super().__call__(x, y, idx)


def _run(args: argparse.Namespace, job: tuple[str, int], threads: int | None) -> dict:
    job_threads(threads)
    gain, seed = job
    data, net = cutoff_selection.inputs("mnist", args.data_dir)
    cfg = SwitchConfig(seed=seed, epochs=args.epochs)
    pyro.clear_param_store()
    torch.manual_seed(seed)
    switched = SwitchedNetwork(net)
    t = time.perf_counter()
    make = LearnedGainSwitchModel if gain == "learned" else SwitchModel
    model = make(switched, num_data=len(data.train), alpha0=cfg.alpha0,
                 **({} if gain == "learned" else {"gain": float(gain)}))
    guide = DirichletGuide(model, cfg.init_concentration, cfg.floor)
    loader = SplitLoader(data.train, cfg.batch_size, True, torch.Generator().manual_seed(seed))
    fit(model, guide, loader, epochs=cfg.epochs, schedule=cfg.schedule, lr=cfg.lr, seed=seed)
    gains = {k[len("gain."):]: float(v.detach()) for k, v in pyro.get_param_store().items() if k.startswith("gain.")}
    post = posterior_of(model, guide)
    means = post.means
    row = {"gain": gain, "seed": seed, "fit_seconds": time.perf_counter() - t, "learned_gains": gains,
           "concentrations": {k: sorted((round(float(c), 3) for c in v), reverse=True)
                              for k, v in guide.concentrations().items()},
           "cutoffs": []}
    for tau in args.taus:
        keep = uncertainty_keep(post.prob_below(tau), means, args.delta)[0]
        pruned = prune_units(net, keep, data.input_shape)
        cut = {"tau": tau, "delta": args.delta, "arch": arch_string(keep),
               "macs": count_macs(pruned, data.input_shape), "params": count_params(pruned)}
        if args.ft_epochs > 0 and cutoff_selection.within([cut], cutoff_selection.parse_budget(args.budget)):
            ft_args = argparse.Namespace(ft_epochs=args.ft_epochs, device="cpu", test=True, dataset="mnist",
                                         data_dir=args.data_dir, model="lenet5", finetune_config=None)
            done = cutoff_selection._finetune(ft_args, (seed, keep, None))
            cut.update({k: done[k] for k in ("val_error_pruned", "val_error", "test_error", "ft_seconds")})
        row["cutoffs"].append(cut)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--gains", nargs="+", default=["0.5", "1", "2", "4", "8", "learned"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--taus", nargs="+", type=float, default=[0.5, 1.0, 1.5])
    p.add_argument("--delta", type=float, default=0.05)
    p.add_argument("--epochs", type=int, default=1, help="switch epochs per layer (default 1, the pipeline's)")
    p.add_argument("--ft-epochs", type=int, default=0, help="fine-tune the kept architectures (default 0: no)")
    p.add_argument("--budget", help="MACS,PARAMS: fine-tune only architectures within this size")
    p.add_argument("--jobs", type=int, default=1, help="Dask workers, one thread each (1: in this process)")
    p.add_argument("--out", default="benchmarks/results/switch_gain.json")
    args = p.parse_args()
    for g in args.gains:
        if g != "learned" and not float(g) > 0:
            p.error(f"a gain is a positive number or 'learned', got {g!r}")
    jobs = [(g, s) for g in args.gains for s in args.seeds]
    start = time.perf_counter()
    with dask_client(args.jobs) as (client, threads):
        if in_this_process(client):
            torch.set_num_threads(1)
        rows = client.gather(client.map(_run, [args] * len(jobs), jobs, [threads] * len(jobs), pure=False))
    for r in rows:
        archs = "  ".join(f"tau {c['tau']}: {c['arch']} ({c['macs']:,} MACs, {c['params']:,} params"
                          + (f", test {100 * c['test_error']:.2f}%" if "test_error" in c else "") + ")"
                          for c in r["cutoffs"])
        learned = " gains " + ", ".join(f"{k} {v:.1f}" for k, v in r["learned_gains"].items()) if r["learned_gains"] else ""
        print(f"gain {r['gain']:>7} seed {r['seed']}: {archs}{learned}")
    write_json(args.out, {"config": vars(args), "rows": rows, "versions": versions(),
                          "seconds": time.perf_counter() - start})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
