"""Processes started by SLURM's ``srun`` (one task per GPU, no torchrun) find their place in the job
from SLURM's variables.

torchrun gives each process ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``; ``srun`` gives ``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID`` and the node list.
:func:`adopt_slurm_task_environment` fills the first from the second (variables already set win,
so torchrun under ``srun``, one agent per node, is left alone): the master is the first host of
the step's node list (expanded as ``scontrol show hostnames`` does), the port
``MASTER_PORT`` or one derived from ``SLURM_JOB_ID``, so that two jobs sharing a node do not
collide. This module imports no torch: the command line calls it before it logs anything.
"""
from __future__ import annotations

import os
import re
from typing import Mapping, MutableMapping, Optional

PORT_BASE, PORT_SPAN = 15000, 20000


def expand_nodelist(nodelist: str) -> list[str]:
    """The host names of a SLURM node list, in ``scontrol show hostnames`` order:
    ``"gpu[01-02,7],login"`` -> ``["gpu01", "gpu02", "gpu7", "login"]`` (zero padding kept, several
    bracket groups in one name expanded left to right)."""
    hosts: list[str] = []
    for name in _split_top_level(nodelist):
        match = re.search(r"\[([^\]]*)\]", name)
        if match is None:
            hosts.append(name)
            continue
        head, tail = name[:match.start()], name[match.end():]
        for part in match.group(1).split(","):
            low, _, high = part.partition("-")
            numbers = range(int(low), int(high or low) + 1)
            hosts += [host for number in numbers for host in expand_nodelist(f"{head}{number:0{len(low)}d}{tail}")]
    return hosts


def _split_top_level(nodelist: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in nodelist:
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return [part for part in [*parts, current] if part]


def slurm_task_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The torch.distributed variables of a process that ``srun`` started as one task of several
    (``SLURM_NTASKS`` > 1, ``SLURM_PROCID`` set); ``{}`` otherwise, or when ``RANK`` is already set
    (torchrun's processes)."""
    tasks = environ.get("SLURM_STEP_NUM_TASKS") or environ.get("SLURM_NTASKS")
    if "RANK" in environ or "SLURM_PROCID" not in environ or tasks is None or int(tasks) <= 1:
        return {}
    nodelist = environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST") or "127.0.0.1"
    port: Optional[str] = environ.get("MASTER_PORT")
    if port is None:
        port = str(PORT_BASE + int(environ.get("SLURM_JOB_ID", "0")) % PORT_SPAN)
    return {
        "RANK": environ["SLURM_PROCID"],
        "WORLD_SIZE": tasks,
        "LOCAL_RANK": environ.get("SLURM_LOCALID", "0"),
        "MASTER_ADDR": environ.get("MASTER_ADDR") or expand_nodelist(nodelist)[0],
        "MASTER_PORT": port,
    }


def adopt_slurm_task_environment(environ: Optional[MutableMapping[str, str]] = None) -> dict[str, str]:
    """Set :func:`slurm_task_environment`'s variables in ``environ`` (``os.environ``); returns them."""
    environ = os.environ if environ is None else environ
    found = slurm_task_environment(environ)
    environ.update(found)
    return found
