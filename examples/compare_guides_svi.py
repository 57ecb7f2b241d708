"""Your own SVI loop: the Dirichlet guide and AutoNormal on the same switch model.

Both guides are fitted with Pyro's plain ``SVI(model, guide, optim, loss)`` on the shipped
pre-trained LeNet-5, one layer at a time; then each posterior's ELBO (eq. 7) and the 95%
credible intervals of the first layer's switches are printed. The two fits live in their own
guide objects, so the first guide's ELBO is the same before and after the second fit.

    python examples/compare_guides_svi.py --data-dir DATA [--examples 2000]
"""
from __future__ import annotations

import argparse
import os

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal, init_to_mean
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms

from pyro_dirichlet_prune import (DirichletGuide, LayerwiseGuide, SwitchModel, estimate_elbo, load_pretrained,
                                  normalisation, posterior_of)


def fit_layer_by_layer(model: SwitchModel, guide, loader: DataLoader, lr: float = 0.05) -> None:
    svi = SVI(model, guide, pyro.optim.Adam({"lr": lr}), Trace_ELBO())
    for layer in model.layers:  # the paper's schedule: one layer at a time, the others unswitched
        with model.switching([layer]):
            for x, y in loader:
                svi.step(x, y)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=os.environ.get("DATA_DIR", "data"))
    ap.add_argument("--examples", type=int, default=None, help="use the first N training examples (default all)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    to_input = transforms.Compose([transforms.ToTensor(), transforms.Normalize(*normalisation("mnist"))])
    train_set = datasets.MNIST(args.data_dir, train=True, transform=to_input, download=True)
    if args.examples:
        train_set = Subset(train_set, range(args.examples))
    loader = DataLoader(train_set, batch_size=256, shuffle=True, generator=torch.Generator().manual_seed(args.seed))
    elbo_loader = DataLoader(train_set, batch_size=256)  # the same minibatches for every ELBO estimate

    net = load_pretrained("lenet5", "mnist")
    model = SwitchModel(net, input_shape=(1, 28, 28), num_data=len(train_set))
    guides = {
        "dirichlet": DirichletGuide(model),
        "normal": LayerwiseGuide(model, lambda m: AutoNormal(m, init_loc_fn=init_to_mean)),
    }
    elbo = {}
    for name, guide in guides.items():
        pyro.set_rng_seed(args.seed)
        fit_layer_by_layer(model, guide, loader)
        pyro.set_rng_seed(args.seed + 1)
        elbo[name] = estimate_elbo(model, guide, elbo_loader, num_particles=8, max_batches=4)
        post = posterior_of(model, guide)
        print(f"{name:9s} ELBO {elbo[name][0]:12.1f} ± {elbo[name][1]:.1f}")
        for j in range(model.widths["conv1"]):
            print(f"          conv1 unit {j}: mean {float(post.means['conv1'][j]):.3f}, 95% interval "
                  f"[{float(post.lower['conv1'][j]):.3f}, {float(post.upper['conv1'][j]):.3f}]")
    pyro.set_rng_seed(args.seed + 1)
    again = estimate_elbo(model, guides["dirichlet"], elbo_loader, num_particles=8, max_batches=4)
    print(f"dirichlet ELBO after fitting AutoNormal: {again[0]:.1f} (before: {elbo['dirichlet'][0]:.1f})")


if __name__ == "__main__":
    main()
