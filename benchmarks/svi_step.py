"""Time one SVI step of switch learning against plain PyTorch on the same frozen network.

    python benchmarks/svi_step.py [--model lenet5] [--batch-size 256] [--repeats 300]
    python benchmarks/svi_step.py --model vgg16 --batch-size 64 --repeats 20 --warmup 3 \
        --out benchmarks/results/svi_step_vgg16.json

Three steps on the same minibatch, interleaved round-robin so that machine noise hits them
alike, median over ``--repeats`` rounds:

* ``svi``: ``pyro.infer.SVI.step`` with the Dirichlet guide and ``Trace_ELBO`` (one particle):
  sample the float64 switches, run the switched network, score, backward, Adam update of phi.
* ``elbo_module``: the step ``fit`` takes: the same ELBO as a module (``Trace_ELBO()(model,
  guide)``), its differentiable loss backward, the guards, one ``torch.optim.Adam`` step, with
  Pyro's validation checks off as on every step of a stage but its first.
* ``plain``: a plain PyTorch forward + cross-entropy + backward of the network with its
  weights requiring grad (the cost of one ordinary training step, without the optimiser).
* ``plain_switched``: the network part of ``svi`` without Pyro: fixed channel scales
  requiring grad multiply the layer outputs, forward + cross-entropy + backward.
* ``plain_svi``: the whole ELBO step of ``svi`` written in plain PyTorch: the guide's
  concentrations floor + exp(raw), s_l ~ Dir(phi_l) by ``rsample``, (N/B)·log-likelihood +
  sum_l [log p(s_l) - log q(s_l)], backward, one ``torch.optim.Adam`` step; svi / plain_svi is
  what Pyro's machinery (traces, messengers, per-parameter optimisers, validation) costs.

Prints the ratios svi/plain and svi/plain_switched and the minor page faults per step of each,
and writes a JSON report (``--out``). With glibc's default allocator settings the ratios are
dominated by page faults (``pyro_dirichlet_prune.allocator``); ``--retain-freed-memory`` applies
the setting the command line runs with, and ``--no-validation`` switches Pyro's validation
checks off (``pyro.enable_validation(False)``), to measure each cost apart.
"""
from __future__ import annotations

import argparse
import math
import resource
import statistics
import time

import pyro
import pyro.optim
import torch
import torch.nn.functional as F
from pyro.infer import SVI, Trace_ELBO

from pyro_dirichlet_prune import DirichletGuide, SwitchModel, retain_freed_memory
from pyro_dirichlet_prune.inference.fit import _adam, _step
from pyro_dirichlet_prune.inference.svi import SwitchConfig
from pyro_dirichlet_prune.models import SwitchedNetwork, build_model
from pyro_dirichlet_prune.report import versions, write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="lenet5")
    ap.add_argument("--batch-size", type=int, default=SwitchConfig().batch_size,
                    help="minibatch size (default: the default of switch learning)")
    ap.add_argument("--repeats", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--num-data", type=int, default=55000)
    ap.add_argument("--input-shape", default=None, help="C,H,W (default 1,28,28 for the LeNets, 3,32,32 otherwise)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scale", default=SwitchConfig().scale, help="switch scale (default: the default model's)")
    ap.add_argument("--retain-freed-memory", action="store_true",
                    help="keep freed memory in the process, as the command line does (allocator.py)")
    ap.add_argument("--no-validation", action="store_true", help="pyro.enable_validation(False)")
    ap.add_argument("--out", default="benchmarks/results/svi_step.json")
    args = ap.parse_args()
    retained = retain_freed_memory() if args.retain_freed_memory else False
    if args.retain_freed_memory and not retained:
        raise SystemExit("--retain-freed-memory: this C library has no mallopt (not glibc)")
    pyro.enable_validation(not args.no_validation)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    pyro.set_rng_seed(args.seed)

    net = build_model(args.model)
    net.eval()
    shape = tuple(int(v) for v in args.input_shape.split(",")) if args.input_shape else (
        (1, 28, 28) if args.model.startswith("lenet") else (3, 32, 32))
    x = torch.randn(args.batch_size, *shape)
    y = torch.randint(0, 10, (args.batch_size,))
    idx = torch.arange(args.batch_size)

    # plain: weights require grad
    plain_net = build_model(args.model)
    plain_net.load_state_dict(net.state_dict())
    plain_net.eval()

    def plain_step() -> None:
        plain_net.zero_grad(set_to_none=True)
        F.cross_entropy(plain_net(x), y, reduction="sum").backward()

    # svi on the frozen network
    switched = SwitchedNetwork(net)
    model = SwitchModel(switched, num_data=args.num_data, scale=args.scale)
    guide = DirichletGuide(model)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), loss=Trace_ELBO())

    def svi_step() -> None:
        svi.step(x, y, idx)

    # the fit's step: the ELBO as a module and torch's Adam, with its own guide
    module_guide = DirichletGuide(model)
    elbo_module = Trace_ELBO()(model, module_guide)
    module_adam = _adam(module_guide, 0.05, 1e-3)

    def elbo_module_step() -> None:  # as every step of a stage but its first (fit validates that one)
        _step(elbo_module, module_adam, x, y, idx, validate=False)

    # the same computation without Pyro
    scales = {n: torch.ones(d, requires_grad=True) for n, d in switched.widths.items()}

    def plain_switched_step() -> None:
        for s in scales.values():
            s.grad = None
        with switched.scaled(scales):
            F.cross_entropy(switched(x), y, reduction="sum").backward()

    # the whole ELBO step without Pyro: the guide's transform, s_l ~ Dir(phi_l) by rsample, the
    # minibatch's log-likelihood scaled by N/B, log p(s_l) - log q(s_l), backward, one Adam step
    raw = {n: torch.full((d,), math.log(guide.init_concentration - guide.floor), dtype=torch.float64,
                         requires_grad=True) for n, d in switched.widths.items()}
    adam = torch.optim.Adam(list(raw.values()), lr=0.05)
    prior = {n: torch.distributions.Dirichlet(torch.full((d,), model.alpha0, dtype=torch.float64))
             for n, d in switched.widths.items()}

    def plain_svi_step() -> None:
        adam.zero_grad(set_to_none=True)
        q = {n: torch.distributions.Dirichlet(guide.floor + r.exp(), validate_args=False) for n, r in raw.items()}
        s = {n: d.rsample() for n, d in q.items()}
        with switched.scaled({n: (model.factors[n] * v).float() for n, v in s.items()}):
            logits = switched(x)
        loglik = -F.cross_entropy(logits, y, reduction="sum") * (args.num_data / x.shape[0])
        kl_terms = sum(prior[n].log_prob(v) - q[n].log_prob(v) for n, v in s.items())
        (-(loglik + kl_terms)).backward()
        adam.step()

    steps = {"svi": svi_step, "elbo_module": elbo_module_step, "plain": plain_step, "plain_switched": plain_switched_step, "plain_svi": plain_svi_step}
    for _ in range(args.warmup):
        for f in steps.values():
            f()
    times: dict[str, list[float]] = {k: [] for k in steps}
    faults = {k: 0 for k in steps}
    for _ in range(args.repeats):
        for k, f in steps.items():
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
            faults[k] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
    med = {k: statistics.median(v) for k, v in times.items()}
    faults_per_step = {k: v / args.repeats for k, v in faults.items()}
    ratio = med["svi"] / med["plain"]
    ratio_switched = med["svi"] / med["plain_switched"]
    ratio_plain_svi = med["svi"] / med["plain_svi"]
    ratio_module = med["elbo_module"] / med["plain_svi"]
    for k, v in med.items():
        print(f"{k:15s} median {1e3 * v:8.3f} ms  (p10 {1e3 * sorted(times[k])[len(times[k]) // 10]:.3f} ms)  "
              f"{faults_per_step[k]:8.1f} minor page faults/step")
    print(f"ratio svi / plain forward+backward          = {ratio:.3f}")
    print(f"ratio svi / plain switched forward+backward = {ratio_switched:.3f}")
    print(f"ratio svi / the same ELBO step without Pyro  = {ratio_plain_svi:.3f}")
    print(f"ratio fit's ELBO-module step / the same      = {ratio_module:.3f}")
    write_json(
        args.out,
        {
            "config": vars(args),
            "median_seconds": med,
            "minor_page_faults_per_step": faults_per_step,
            "pyro_validation": not args.no_validation,
            "freed_memory_retained": retained,
            "ratio_svi_over_plain": ratio,
            "ratio_svi_over_plain_switched": ratio_switched,
            "ratio_svi_over_plain_svi": ratio_plain_svi,
            "ratio_elbo_module_over_plain_svi": ratio_module,
            "threads": torch.get_num_threads(),
            "versions": versions(),
        },
    )


if __name__ == "__main__":
    main()
