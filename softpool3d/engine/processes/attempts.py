"""Which attempt of a torchrun job this is, as every rank of the job agrees.

torchrun's agents give their workers ``TORCHELASTIC_RESTART_COUNT``, but on several nodes the
counts differ: the agent whose worker failed counts a restart, while an agent that restarts its
healthy workers because another node re-joined the rendezvous does not ("membership changes do
not count as retries"). Ranks that used their own count disagreed on whether to resume and on the
store prefix of their process group, and waited on each other until the collective timeout.

The agents serve one TCP store to every attempt (``TORCHELASTIC_USE_AGENT_STORE``). Global rank 0
counts its starts in that store, and hands the count to every other rank in a handshake that a
key left by an earlier attempt cannot answer: each rank announces a nonce of its own, rank 0
answers that nonce with the count, and the rank confirms the count back.
"""
from __future__ import annotations

import os
import time
import uuid
from datetime import timedelta

import torch.distributed as dist

_POLL_S = 0.02
_PREFIX = "softpool3d/attempt/"


def uses_agent_store() -> bool:
    """Whether this process is a torchrun worker whose agents serve the job's store."""
    return os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"


def agent_store(world_size: int, timeout: timedelta) -> dist.Store:
    """A client of the agents' store at ``MASTER_ADDR:MASTER_PORT``."""
    return dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size, is_master=False,
                         timeout=timeout)


def agree_on_attempt(store: dist.Store, rank: int, world_size: int, timeout: timedelta) -> int:
    """The number of this attempt (0 for the job's first), the same on every rank; blocks until all
    ``world_size`` ranks have joined, or raises ``RuntimeError`` naming the ranks missing after ``timeout``."""
    deadline = time.monotonic() + timeout.total_seconds()
    if rank == 0:
        attempt = store.add(_PREFIX + "count", 1) - 1
        pending, answered = set(range(1, world_size)), {}
        while True:
            for peer in sorted(pending):
                if _read(store, f"confirm/{peer}") == str(attempt):
                    pending.discard(peer)
                elif (nonce := _read(store, f"hello/{peer}")) is not None and answered.get(peer) != nonce:
                    store.set(_PREFIX + f"answer/{peer}", f"{nonce} {attempt}")
                    answered[peer] = nonce
            if not pending:
                return attempt
            _wait_or_fail(deadline, pending, attempt)
    nonce = uuid.uuid4().hex
    store.set(_PREFIX + f"hello/{rank}", nonce)
    while True:
        answered, _, attempt = (_read(store, f"answer/{rank}") or "").partition(" ")
        if answered == nonce:
            store.set(_PREFIX + f"confirm/{rank}", attempt)
            return int(attempt)
        _wait_or_fail(deadline, {0}, None)


def _read(store: dist.Store, key: str) -> str | None:
    key = _PREFIX + key
    return store.get(key).decode() if store.check([key]) else None


def _wait_or_fail(deadline: float, missing: set[int], attempt: int | None) -> None:
    if time.monotonic() > deadline:
        which = "" if attempt is None else f" for attempt {attempt}"
        raise RuntimeError(f"ranks {sorted(missing)} did not join the job's store{which} before the process-group "
                           "timeout (train.dist_timeout_s)")
    time.sleep(_POLL_S)
