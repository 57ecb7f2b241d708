"""``dirichlet-prune export``: a saved network as an ONNX or TorchScript file that loads without
this package, checked against the network (``export.export_checkpoint``)."""
from __future__ import annotations

import argparse

from ..export import FORMATS, SUFFIXES, export_checkpoint
from ..models.user import parse_input_shape
from .options import add_allow_pickle_arg, positive_int


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("export", help="write a saved network as ONNX or TorchScript",
                       description="Write the network of a checkpoint (pre-trained or pruned) as an ONNX file (for "
                                   "ONNX Runtime) or a TorchScript file (for torch.jit.load), load it back, and "
                                   "check that it gives the network's outputs on random batches of 1 and 8. A "
                                   "report <out>.json is written beside it.")
    p.add_argument("checkpoint", help="a model.pt or pruned.pt written by pretrain or prune")
    p.add_argument("--format", choices=FORMATS, default="onnx", help="file format (default onnx)")
    p.add_argument("--out", default=None,
                   help="file to write (default: beside the checkpoint, with the suffix "
                        + " or ".join(SUFFIXES.values()) + ")")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--batch-size", type=positive_int, default=1,
                   help="batch size the network is traced with (default 1); the file takes any batch size")
    p.add_argument("--input-shape", default=None,
                   help="input shape without the batch dimension, e.g. 3,32,32; needed only for a bare "
                        "torch.save(model) file (a checkpoint records its own)")
    add_allow_pickle_arg(p)
    return p


def run(args: argparse.Namespace):
    shape = parse_input_shape(args.input_shape) if args.input_shape is not None else None
    result = export_checkpoint(args.checkpoint, args.out, args.format, allow_pickle=args.allow_pickle,
                               overwrite=args.overwrite, input_shape=shape, batch_size=args.batch_size)
    print(f"wrote {result.path} ({result.format}, inputs [batch, {', '.join(map(str, result.input_shape))}]); "
          f"loaded back at batches {', '.join(map(str, result.checked_batches))}: max abs difference "
          f"{result.max_abs_diff:.3g} (outputs up to {result.output_scale:.3g}); report {result.path}.json")
    return result
