"""Keep freed memory in the process: the CPU allocator setting that makes switch learning and
fine-tuning stop paying for page faults.

PyTorch's CPU tensors come from the C library's ``malloc``. With glibc's defaults a freed block
of more than the (adaptive) mmap threshold is given back to the operating system, and so is the
free top of the heap once it exceeds the trim threshold; the next step's activations of the same
size are then mapped afresh and every 4 KiB page is faulted in and zeroed on first touch. Which
blocks go back depends on how small allocations interleave with the large ones, so the cost is
erratic: on the shipped LeNet-5 at batch 256 one ``SVI.step`` of switch learning took about
6,100 minor page faults, the same forward and backward in plain PyTorch about 1,400, and the
faults were the whole difference between the two (``docs/measurements.md``,
``benchmarks/svi_step.py``).

``retain_freed_memory()`` raises both thresholds (glibc's ``mallopt``), so that freed blocks
stay in the process for the next step: after the first step of a loop no page is faulted in
again. The price is that the process keeps its peak memory until it exits, which is what a
training process wants. It changes the whole process, so the library never calls it on its own:
the command line does (it owns its process), and a script can.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024
"""The largest mmap threshold glibc accepts on 64-bit machines: blocks up to 32 MiB come from
the heap and are reused; larger ones are still mapped and unmapped."""
TRIM_THRESHOLD = 1 << 30


def retain_freed_memory(mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Ask glibc to keep freed blocks of up to ``mmap_threshold`` bytes and up to
    ``trim_threshold`` bytes of free heap top in the process (module docstring). Returns True
    when both settings were taken, False where the C library is not glibc (nothing changes)."""
    for name, value in (("mmap_threshold", mmap_threshold), ("trim_threshold", trim_threshold)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int (bytes), got {value!r}")
        if value < 0:
            raise ValueError(f"{name} must be non-negative, got {value}")
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, int(mmap_threshold))) and bool(mallopt(M_TRIM_THRESHOLD, int(trim_threshold)))
