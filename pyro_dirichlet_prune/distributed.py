"""Data-parallel switch learning and fine-tuning: torch.distributed, as ``torchrun`` launches it.

Every process (rank) runs the same program on its share of every minibatch; the gradients are
averaged by ``DistributedDataParallel`` and every rank takes the same optimiser step, so all ranks
hold the same parameters throughout and the run is the one-process run with its minibatches
split. How each loop splits:

* switch learning (``inference.fit.fit``): the ELBO is an ``nn.Module``
  (``Trace_ELBO()(model, guide)``, Pyro's recipe in ``examples/svi_lightning.py``) wrapped in DDP;
  the guide's parameters live in the guide (module-local), a lazily built guide is warmed up
  first, and the data plate keeps the global N over the local batch B_r, so rank r's loss is
  -(N/B_r) sum_{n in r} log p(y_n | x_n, s) + KL(q || p). With every rank drawing the same switch
  sample (same seed), the average over ranks is the one-process loss of the whole minibatch when
  the ranks' shares are equal (B_r = B/W);
* fine-tuning (``training.finetune``): the network is wrapped in DDP; rank r's loss is its
  share's summed cross-entropy over the whole minibatch's size times W, so the averaged gradient
  is the whole minibatch's mean exactly, also for unequal shares;
* each global minibatch is split as torch's ``DistributedSampler`` splits an epoch, rank r taking
  examples r, r+W, r+2W, ... of it (``ShardedLoader``), so the minibatches are the one-process
  run's.

The frozen network stays a plain ``nn.Module`` (Pyro issue #3438: a ``PyroModule`` would make
its weights trainable). gloo runs on the CPU, nccl on GPUs. Only rank 0 writes outputs.
Batch-norm layers normalise with their rank's share (``SyncBatchNorm`` needs CUDA).
"""
from __future__ import annotations

import datetime
import os
from typing import Iterable, Iterator

import torch
import torch.distributed as dist


def active() -> bool:
    """Whether this process is one of several ranks of an initialised process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0 (or the only process): the one that writes outputs."""
    return rank() == 0


def launched() -> bool:
    """Whether ``torchrun`` (or another launcher setting ``WORLD_SIZE``) started several processes."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: str = "cpu", timeout_s: float = 1800.0) -> bool:
    """Join the process group ``torchrun`` describes in the environment (``RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR``, ``MASTER_PORT``): gloo for ``device="cpu"``, nccl for CUDA (each rank on
    ``cuda:LOCAL_RANK``). Returns whether a group of several processes is active; a single
    process (no launcher) does nothing."""
    if not launched():
        return False
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this build of torch")
    if not dist.is_initialized():
        cuda = torch.device(device).type == "cuda"
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_s))
    return active()


def local_device(device: str) -> str:
    """The device of this rank: ``cuda:LOCAL_RANK`` for ``cuda`` under a launcher, else ``device``."""
    if active() and torch.device(device).type == "cuda" and torch.device(device).index is None:
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def barrier() -> None:
    if active():
        dist.barrier()


def all_sum(values: list[float]) -> list[float]:
    """The sums over ranks of a few numbers (float64 on the CPU; as they are on one process)."""
    if not active():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return t.cpu().tolist()


def all_mean(value: float) -> float:
    return all_sum([value])[0] / world_size()


def share(n: int) -> slice:
    """Rank r's share of a minibatch of ``n`` examples: r, r+W, r+2W, ..."""
    return slice(rank(), n, world_size())


class ShardedLoader:
    """Rank r's share of every minibatch of ``loader`` (``share``). Every rank iterates the same
    ``loader`` (same seed), so the global minibatches are the one-process run's; its length and
    ``state_dict``/``load_state_dict`` are the loader's (resume works as for one process)."""

    def __init__(self, loader: Iterable) -> None:
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple]:
        for batch in self.loader:
            part = share(len(batch[1]))
            yield tuple(t[part] for t in batch)

    def state_dict(self) -> dict:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.loader.load_state_dict(state)

    def __getattr__(self, name: str):  # batch_size, split, ...: the loader's
        if name == "loader":
            raise AttributeError(name)
        return getattr(self.loader, name)


def sharded(loader: Iterable) -> Iterable:
    """``ShardedLoader(loader)`` when several ranks run, else ``loader`` itself."""
    return ShardedLoader(loader) if active() else loader


def ddp(module: torch.nn.Module, find_unused_parameters: bool = False) -> torch.nn.Module:
    """``module`` wrapped in ``DistributedDataParallel`` (on its device) when several ranks run,
    else ``module`` itself. DDP starts by broadcasting rank 0's parameters and buffers."""
    if not active():
        return module
    from torch.nn.parallel import DistributedDataParallel

    p = next((p for p in module.parameters() if p.requires_grad), None)
    device_ids = [p.device.index] if p is not None and p.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=find_unused_parameters)
