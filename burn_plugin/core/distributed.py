"""BURN's per-sample passes split over ``torch.distributed`` ranks (``torchrun --nproc_per_node N``).

The boundary analysis and every scoring pass are per-sample work. The training set is cut into fixed
*chunks* of whole boundary batches (:func:`chunk_size`: about ``CHUNKS`` of them, each at least
``MIN_CHUNK_BATCHES`` batches), whatever the number of ranks; each rank takes a
contiguous run of whole chunks, processes each chunk on its own (the boundary analysis's refilling
pool starts and drains inside a chunk), and the rows are gathered in order. A one-process run cuts the
set into the same chunks, so every sample sees exactly the same batches in both, and the gathered
result is bit-for-bit the single-process one on any machine where the ranks compute alike (a batch's
arithmetic depends on its size and contents only, not on which process runs it). Fine-tuning runs on
rank 0 alone (its sets are a few thousand samples; see :func:`~burn_plugin.core.burn.run_burn`), whose
weights are then broadcast.

No environment reading: :func:`current_group` only asks ``torch.distributed`` whether a process group
is up; the defend layer starts it from torchrun's variables with :func:`join_process_group`, whose
rendezvous waits a bounded time for the other ranks (its C++ messages are held in a temporary file
and shown only when it succeeds: a failure is one line).
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn as nn

from ..errors import RankFailedError

#: chunks per training set: whole chunks go to the ranks, so 16 balance 2, 4, 8 or 16 ranks evenly
CHUNKS = 16
#: a chunk's refilling pool drains once at its end; at least 4 batches keep it full most of the time
MIN_CHUNK_BATCHES = 4


@dataclass(frozen=True)
class Group:
    """This process's place among the ranks (``rank`` 0 of 1 when no process group is up)."""

    rank: int = 0
    world: int = 1
    device: str = "cpu"          # where collectives move tensors (nccl needs them on the GPU)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        return self.world > 1

    def chunk_ranges(self, n: int, chunk: int) -> list[tuple[int, int]]:
        """The ``(start, stop)`` chunks this rank processes: a contiguous run of whole chunks."""
        bounds = [(a, min(a + chunk, n)) for a in range(0, n, chunk)]
        per, extra = divmod(len(bounds), self.world)
        first = self.rank * per + min(self.rank, extra)
        return bounds[first:first + per + (1 if self.rank < extra else 0)]

    def map_rows(self, fn: Callable[[slice], dict], n: int, chunk: int) -> dict:
        """``fn(slice)`` -> a dict of tensors with one row per sample of the slice, called chunk by chunk
        on this rank's chunks; returns every sample's rows, in order, on every rank (CPU tensors)."""
        parts = [fn(slice(a, b)) for a, b in self.chunk_ranges(n, chunk)]
        if not parts:
            parts = [{k: v[:0] for k, v in fn(slice(0, 0)).items()}]
        local = {k: torch.cat([p[k].cpu() for p in parts]) for k in parts[0]}
        if not self.sharded:
            return local
        return {k: self._all_gather_rows(v) for k, v in local.items()}

    def _all_gather_rows(self, t: torch.Tensor) -> torch.Tensor:
        metas: list = [None] * self.world
        dist.all_gather_object(metas, (len(t), tuple(t.shape[1:])))
        counts = [m[0] for m in metas]
        if len(t) == 0:  # a rank without chunks (more ranks than chunks) takes the others' row shape
            t = t.reshape((0,) + next((m[1] for m in metas if m[0]), tuple(t.shape[1:])))
        width = max(counts)
        pad = torch.zeros((width - len(t),) + tuple(t.shape[1:]), dtype=t.dtype)
        mine = torch.cat([t, pad]).to(self.device)
        if mine.dtype == torch.bool:  # not every backend reduces or gathers bool
            mine = mine.to(torch.uint8)
        got = [torch.empty_like(mine) for _ in range(self.world)]
        dist.all_gather(got, mine)
        return torch.cat([g[:c].cpu() for g, c in zip(got, counts)]).to(t.dtype)

    def broadcast_model(self, model: nn.Module) -> None:
        """Rank 0's parameters and buffers, in place, on every rank."""
        if not self.sharded:
            return
        for t in list(model.state_dict().values()):
            if not isinstance(t, torch.Tensor):
                continue
            buf = t.detach().to(self.device)
            dist.broadcast(buf, src=0)
            if buf.data_ptr() != t.data_ptr():
                t.copy_(buf.to(t.device))

    def broadcast_object(self, obj):
        """Rank 0's ``obj`` (any picklable value) on every rank."""
        if not self.sharded:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, device=torch.device(self.device) if self.device != "cpu" else None)
        return box[0]


def current_group(device: str = "cpu") -> Group:
    """The running process group as a :class:`Group` (one rank of one when none is up)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return Group(rank=dist.get_rank(), world=dist.get_world_size(),
                     device=device if str(device).startswith("cuda") else "cpu")
    return Group(device="cpu")


def chunk_size(batch_size: int, n: int) -> int:
    """Samples per chunk of an ``n``-sample set: a whole number of boundary batches (so every scoring
    pass sees the one-process batches), about ``n / CHUNKS``, at least ``MIN_CHUNK_BATCHES`` batches.
    It depends on ``n`` and the batch size only, never on the number of ranks (3,840 images for
    60,000 at the default 256)."""
    n_batches = -(-max(n, 1) // batch_size)
    return batch_size * max(MIN_CHUNK_BATCHES, -(-n_batches // CHUNKS))


def join_process_group(backend: str, *, rank: int, world: int, timeout_s: float, where: str,
                       retry_hint: str = "") -> None:
    """``init_process_group(backend)`` for ``rank`` of ``world`` (``env://``, as torchrun sets it up),
    with the rendezvous bounded by ``timeout_s``: a rank whose peers do not join in time (or cannot be
    reached at ``where``) gets one :class:`RankFailedError` line naming the timeout and the fix instead
    of waiting the backend's default half hour. Once joined, collectives and the store get the
    backend's own default timeout back (rank 0 fine-tunes alone for minutes while the others wait)."""
    from torch.distributed.constants import default_pg_timeout

    try:
        from torch.distributed.constants import default_pg_nccl_timeout
    except ImportError:  # pragma: no cover - builds without NCCL
        default_pg_nccl_timeout = None
    short = timedelta(seconds=timeout_s)
    long = (default_pg_nccl_timeout or default_pg_timeout) if backend == "nccl" else default_pg_timeout
    with _held_stderr() as held:
        try:
            store, rank, world = next(dist.rendezvous("env://", rank=rank, world_size=world, timeout=short))
            store.set_timeout(short)  # the backend's own connection step waits no longer than the rendezvous
            dist.init_process_group(backend, store=dist.PrefixStore("default_pg", store), rank=rank,
                                    world_size=world, timeout=long)
            store.set_timeout(long)
        except Exception as exc:  # noqa: BLE001 - every rendezvous failure becomes one line
            held.failed = True
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            if isinstance(exc, dist.DistError) and "timed out" in str(exc).lower():
                raise RankFailedError(
                    f"rank {rank} of {world}: the other processes did not join within {timeout_s:g} s (rendezvous "
                    f"at {where}); start all {world} with torchrun (on every node the same --nnodes, --master_addr "
                    f"and --master_port){retry_hint}") from None
            raise RankFailedError(f"rank {rank} of {world} could not join the process group at {where} "
                                  f"({type(exc).__name__}: {first}); check MASTER_ADDR and MASTER_PORT (a free "
                                  f"port, reachable from every node)") from None


class _Held:
    failed = False


@contextlib.contextmanager
def _held_stderr():
    """Hold what C/C++ code writes to file descriptor 2 (c10d logs every retry of a rendezvous there);
    shown afterwards unless ``failed`` was set (the error line says it all then)."""
    held = _Held()
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, ValueError, OSError):  # no real descriptor (captured output): nothing to hold
        yield held
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), fd)
        try:
            yield held
        finally:
            sys.stderr.flush()
            os.dup2(saved, fd)
            os.close(saved)
            if not held.failed:
                tmp.seek(0)
                text = tmp.read()
                if text:
                    os.write(fd, text)
