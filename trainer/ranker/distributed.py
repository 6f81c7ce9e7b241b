"""The few collectives the ranker needs beyond TorchRec's (gloo on CPU, nccl on GPU).

Without an initialised process group, the fused path starts a one-process group on an
in-memory store, so the same code runs with 1 process or N.

TorchRec divides the sparse gradients by the world size in the backward of its all-to-all
(``comm_ops.GRADIENT_DIVISION``, DDP's averaging). The ranker's loss is already divided by
the global batch, so the fused path turns that off: every rank's table rows get the true
sum of the gradients. With the division, row-wise Adagrad's state held N² times less with N
processes than with 1 (hidden by Adagrad's scale invariance except for eps), and a
checkpoint resumed under another process count took steps up to N times too large or
too small.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable

import numpy as np
import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def in_torchrun_group(main: Callable[[], int]) -> int:
    """``main()`` (an exit code), inside a gloo process group when torchrun started this
    process (``WORLD_SIZE`` > 1) and no group exists yet.

    Every rank leaves the group together once it is done: a rank whose peer tore its group
    down first could abort in gloo's destructor and exit non-zero after all its work was
    saved. Only after a success, which every rank reaches together: a rank that failed (an
    exception, or a refusal such as a missing vector set) may leave its peers inside a
    collective, where a barrier would wait for the gloo timeout; it exits instead, and
    torchrun stops the others.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return main()
    dist.init_process_group("gloo")
    code = main()
    if code == 0:
        dist.barrier()
        dist.destroy_process_group()
    return code


def sum_sparse_gradients() -> None:
    """Make TorchRec sum the sparse gradients over the ranks instead of averaging them."""
    from torchrec.distributed import comm_ops

    comm_ops.set_gradient_division(False)


def ensure_process_group() -> bool:
    """Prepare the fused path: sparse gradients summed over the ranks
    (:func:`sum_sparse_gradients`), and a one-process gloo group when none exists; True
    when one was started here. That group is destroyed at exit, while the interpreter is
    still whole: gloo's threads outliving it can abort the process as it exits."""
    sum_sparse_gradients()
    if dist.is_initialized():
        return False
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    global _OWN_GROUP
    if _OWN_GROUP is None:
        atexit.register(_destroy_own_group)
    _OWN_GROUP = dist.group.WORLD
    return True


_OWN_GROUP: object = None  # the one-process group started here, if any


def _destroy_own_group() -> None:
    """At exit: destroy the group :func:`ensure_process_group` started, if it is still the
    default one (not one that somebody else created after it was destroyed)."""
    if dist.is_initialized() and dist.group.WORLD is _OWN_GROUP:
        dist.destroy_process_group()


def broadcast_bytes(data: bytes | None, src: int = 0) -> bytes:
    """``data`` of rank ``src`` on every rank (others pass None)."""
    rank, size = world()
    if size == 1:
        assert data is not None
        return data
    n = torch.tensor([len(data) if rank == src and data is not None else 0], dtype=torch.int64)
    dist.broadcast(n, src)
    buf = (
        torch.frombuffer(bytearray(data), dtype=torch.uint8)
        if rank == src and data is not None and len(data)
        else torch.empty(int(n.item()), dtype=torch.uint8)
    )
    if int(n.item()):
        dist.broadcast(buf, src)
    return buf.numpy().tobytes()


def all_gather_array(a: np.ndarray) -> np.ndarray:
    """Concatenation of every rank's 1-D array, in rank order, on every rank."""
    _rank, size = world()
    if size == 1:
        return a
    t = torch.from_numpy(np.ascontiguousarray(a))
    sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(size)]
    dist.all_gather(sizes, torch.tensor([len(a)], dtype=torch.int64))
    longest = max(int(s.item()) for s in sizes)
    padded = torch.zeros(longest, dtype=t.dtype)
    padded[: len(a)] = t
    parts = [torch.zeros(longest, dtype=t.dtype) for _ in range(size)]
    dist.all_gather(parts, padded)
    return np.concatenate([p[: int(s.item())].numpy() for p, s in zip(parts, sizes, strict=True)])


def any_rank(flag: bool) -> bool:
    """True when ``flag`` is true on any rank."""
    _rank, size = world()
    if size == 1:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int64)
    dist.all_reduce(t)
    return bool(t.item())


def barrier() -> None:
    if world()[1] > 1:
        dist.barrier()
