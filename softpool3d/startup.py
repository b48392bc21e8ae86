"""Start-up of a command: the heavy imports (torch, torchvision, which imports ``torch._dynamo``, and the
rest of the engine) made with Python's cyclic garbage collector paused, and everything they created
then moved into its permanent generation (``gc.freeze``).

Those imports create about half a million objects that live as long as the process. With the
collector on, it walks them over and over while they are created, again at every full collection
later (a training job's included), and once more when the interpreter exits; frozen, they are never
walked, and they are still freed when their reference count drops to zero. The cyclic garbage the
imports leave (a few MB) is frozen with them instead of freed. On this machine this takes about 3 s
of CPU off each training process (BENCHMARKS.md, "Start-up and exit of a command"). The workers' fork
server freezes its imports too (:mod:`softpool3d.datasets.worker_server`).

Import-light (the standard library only), so that a command line enters it before torch.
"""
from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def imports_frozen() -> Iterator[None]:
    """Run the ``with`` block (the imports) with the cyclic collector paused, then freeze every object
    tracked so far and restore the collector's state (on if it was on)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()
