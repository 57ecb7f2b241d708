"""``dirichlet-prune pretrain``: train a network from scratch (``pipeline.run_pretrain``)."""
from __future__ import annotations

import argparse

from ..models import MODEL_NAMES
from .options import add_data_args, add_out_args, add_seed_arg, add_train_args, positive_float, positive_int, train_config


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("pretrain", help="train a network from scratch",
                       description="Train a network with cosine learning-rate decay; keep the epoch of lowest "
                                   "validation error. LeNets: Adam, lr 2e-3, 20 epochs, shifts by up to 2 pixels. "
                                   "vgg16 and wrn-D-K: SGD with Nesterov momentum 0.9, lr 0.1, weight decay 5e-4, "
                                   "200 epochs, CIFAR augmentation (random crop with 4-pixel padding, flips).")
    p.add_argument("--model", default="lenet5",
                   help=f"network: {', '.join(MODEL_NAMES)}, e.g. wrn-28-10, wrn-16-4 (default lenet5)")
    p.add_argument("--widths", default=None,
                   help="prunable widths, e.g. 10-20-100-25 for lenet5, 14 numbers for vgg16, the conv1 width of "
                        "every block for a WRN (default: the model's)")
    p.add_argument("--width-multiplier", type=positive_float, default=None,
                   help="the model's default widths times this factor, rounded (e.g. 0.125 for a narrow vgg16)")
    add_data_args(p)
    p.add_argument("--image-size", type=positive_int, default=None,
                   help="zero-pad the images to this square size (default: the size the model is built for, 32 "
                        "for vgg16 and wrn-D-K, so that 28x28 MNIST-like images are padded; the data's otherwise)")
    p.add_argument("--epochs", type=positive_int, default=None, help="training epochs (default 20 for the "
                                                                     "LeNets, 200 otherwise)")
    p.add_argument("--lr", type=positive_float, default=None,
                   help="learning rate (default 2e-3 for the LeNets, 0.1 otherwise)")
    p.add_argument("--batch-size", type=positive_int, default=128, help="minibatch size (default 128)")
    add_train_args(p, "", "training")
    add_seed_arg(p)
    add_out_args(p)
    return p


def run(args: argparse.Namespace) -> dict:
    from ..models import check_model_name
    from ..pipeline import PretrainConfig, run_pretrain

    check_model_name(args.model)
    cfg = PretrainConfig(
        model=args.model, dataset=args.dataset, data_dir=args.data_dir, widths=args.widths,
        width_multiplier=args.width_multiplier,
        train=train_config(args, args.model, "pretrain", epochs=args.epochs, lr=args.lr, batch_size=args.batch_size),
        val_size=args.val_size, split_seed=args.split_seed, max_train_examples=args.max_train_examples,
        image_size=args.image_size,
    )
    report = run_pretrain(cfg, args.out, args.overwrite, args.resume, args.checkpoint_every)
    m = report["metrics"]
    print(f"pretrained {args.model} on {args.dataset}: test error {m['test']['error']:.4f}, "
          f"{m['params']} params, {m['macs']} MACs -> {args.out}")
    return report
