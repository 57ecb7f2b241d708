"""How the Dirichlet guide's total concentrations phi_l0 move during switch learning, per epoch.

    python benchmarks/concentration_trace.py --data-dir DATA [--examples 10000] [--epochs 30] \
        [--inits 1 10] [--lr 0.05] [--batch-size 128] [--elbo trace|meanfield] [--out PATH]

The shipped LeNet-5 (MNIST), frozen; the default switch model (simplex scale, alpha0 = 0.5) on the
first ``--examples`` training examples; ``fit`` layer by layer (the default schedule) with
``--epochs`` epochs a layer, Adam at ``--lr``, minibatches of ``--batch-size`` in an order drawn
from a generator seeded 0, from each initial concentration of ``--inits``. After every epoch it
records each active layer's phi_l0 = sum_j phi_lj, which sets the widths of its intervals. A
posterior reached by the fit would give the same phi_l0 from every initial value, and stop
moving: the JSON report shows whether it does.
"""
from __future__ import annotations

import argparse
import time

import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from pyro_dirichlet_prune import DirichletGuide, SwitchModel, SplitLoader, fit, load_pretrained
from pyro_dirichlet_prune.data import Split, load_data
from pyro_dirichlet_prune.report import versions, write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--examples", type=int, default=10000)
    ap.add_argument("--epochs", type=int, default=30, help="epochs a layer")
    ap.add_argument("--inits", type=float, nargs="+", default=[1.0, 10.0])
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--elbo", choices=("trace", "meanfield"), default="trace")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = args.out or (f"benchmarks/results/concentration_trace_lr{args.lr}_b{args.batch_size}_{args.elbo}"
                       f"_e{args.epochs}.json")
    net = load_pretrained("lenet5", "mnist").eval()
    data = load_data("mnist", args.data_dir)
    train = Split(data.train.x[:args.examples], data.train.y[:args.examples])
    runs = {}
    for init in args.inits:
        model = SwitchModel(net, num_data=len(train))
        guide = DirichletGuide(model, init_concentration=init)
        trace: dict[str, list[float]] = {layer: [] for layer in model.layers}

        def record(event, guide=guide, trace=trace) -> None:
            if event.epoch_end:
                for layer in event.layers:
                    trace[layer].append(round(float(guide.concentration(layer).detach().sum()), 2))

        loss = TraceMeanField_ELBO() if args.elbo == "meanfield" else Trace_ELBO()
        loader = SplitLoader(train, args.batch_size, True, torch.Generator().manual_seed(0))
        t = time.perf_counter()
        fit(model, guide, loader, epochs=args.epochs, seed=0, progress=False, lr=args.lr, callback=record,
            loss=loss)
        seconds = time.perf_counter() - t
        runs[str(init)] = {"seconds": seconds, "phi0_per_epoch": trace}
        print(f"init {init}: {seconds:.0f} s")
        for layer, values in trace.items():
            print(f"  {layer:6s} phi0 after epochs 1, {len(values) // 2}, {len(values)}: "
                  f"{values[0]:.0f}, {values[len(values) // 2 - 1]:.0f}, {values[-1]:.0f}")
    write_json(out, {"config": {**vars(args), "out": out}, "runs": runs, "versions": versions()})


if __name__ == "__main__":
    main()
