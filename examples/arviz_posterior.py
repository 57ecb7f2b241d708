"""Read the switch posterior with ArviZ: ``az.summary``, ``az.plot_forest``, ``az.plot_posterior``.

Two guides of the shipped LeNet-5's switches are fitted on MNIST examples with the library's
``fit``: the Dirichlet guide, layer by layer (the paper's schedule: each layer's posterior is a
per-stage conditional), and Pyro's ``AutoNormal`` (module-local), all layers jointly. Each becomes
an ``arviz.InferenceData`` (``to_inference_data``); ArviZ then summarises the conv1 switches of
both (means, sds, HDIs), draws them in one forest plot and draws the Dirichlet guide's posterior
of conv1's first units, written to ``--out``.

    python examples/arviz_posterior.py --data-dir DATA [--examples 3000] [--out runs/arviz]
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from pyro.infer.autoguide import AutoNormal  # noqa: E402

from pyro_dirichlet_prune import DirichletGuide, ModuleLocal, SwitchModel, fit, load_pretrained  # noqa: E402
from pyro_dirichlet_prune.data import Split, SplitLoader, load_data  # noqa: E402
from pyro_dirichlet_prune.inference.arviz_data import to_inference_data  # noqa: E402

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)  # ArviZ 0.x announces its 1.0 refactor on import
    import arviz as az  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=os.environ.get("DATA_DIR", "data"))
    ap.add_argument("--examples", type=int, default=3000, help="training examples used (default 3000)")
    ap.add_argument("--draws", type=int, default=1000)
    ap.add_argument("--out", default=None, help="output folder (default: a temporary one)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = load_data("mnist", args.data_dir)
    train = Split(data.train.x[: args.examples], data.train.y[: args.examples])
    net = load_pretrained("lenet5", "mnist")
    model = SwitchModel(net, input_shape=(1, 28, 28), num_data=len(train))

    dirichlet = DirichletGuide(model)
    fitted_d = fit(model, dirichlet, SplitLoader(train, 128, True, torch.Generator().manual_seed(0)), epochs=2,
                   seed=0, progress=False)
    autonormal = ModuleLocal(AutoNormal(model))
    fitted_a = fit(model, autonormal, SplitLoader(train, 128, True, torch.Generator().manual_seed(0)), epochs=2,
                   schedule="joint", lr=0.02, seed=0, progress=False)
    print(f"Two short fits ({len(fitted_d.losses)} and {len(fitted_a.losses)} steps), not run to convergence: "
          f"their intervals show how to read a guide with ArviZ, not the posterior's final width.\n")

    post_d = to_inference_data(model, dirichlet, num_samples=args.draws, schedule="sequential")
    post_a = to_inference_data(model, autonormal, num_samples=args.draws, schedule="joint")
    print(f"Dirichlet guide ({post_d.posterior.attrs['structure']}):")
    print(az.summary(post_d, var_names=["switch.conv1"], kind="stats", hdi_prob=0.95).round(3).to_string())
    print(f"\nAutoNormal ({post_a.posterior.attrs['structure']}):")
    print(az.summary(post_a, var_names=["switch.conv1"], kind="stats", hdi_prob=0.95).round(3).to_string())

    out = Path(args.out or tempfile.mkdtemp(prefix="arviz-"))
    out.mkdir(parents=True, exist_ok=True)
    az.plot_forest([post_d, post_a], model_names=["Dirichlet", "AutoNormal"], var_names=["switch.conv1"],
                   combined=True, hdi_prob=0.95, figsize=(6, 6))
    plt.savefig(out / "forest_conv1.png", dpi=100, bbox_inches="tight")
    plt.close("all")
    az.plot_posterior(post_d, var_names=["switch.conv1"], coords={"conv1_unit": [0, 1, 2]}, hdi_prob=0.95)
    plt.savefig(out / "posterior_conv1.png", dpi=100, bbox_inches="tight")
    plt.close("all")
    print(f"\nfigures: {out / 'forest_conv1.png'}, {out / 'posterior_conv1.png'}")


if __name__ == "__main__":
    main()
