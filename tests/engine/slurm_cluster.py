"""A one-node SLURM cluster for the tests: munged, slurmctld and slurmd from Debian's packages
(``.ci/install_slurm``), started in a temporary folder with this machine's hostname and stopped after.

:func:`start_cluster` raises :class:`SlurmUnavailable` with the reason when the daemons are not
installed or do not come up (no root, no munge key, a port taken); the tests skip with that reason.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "squeue", "sacct")


class SlurmUnavailable(RuntimeError):
    """SLURM cannot run here; the message says why."""


@dataclass
class SlurmCluster:
    folder: Path
    env: dict
    processes: list = field(default_factory=list)

    def run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run(list(command), env=self.env, capture_output=True, text=True, timeout=60)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} exited {done.returncode}: {done.stderr.strip()}")
        return done

    def job(self, job_id: str) -> dict:
        """``scontrol show job``'s fields (``JobState``, ``Restarts``, ``ExitCode``, ...)."""
        text = self.run("scontrol", "show", "job", "--oneliner", job_id).stdout
        return dict(item.split("=", 1) for item in text.split() if "=" in item)

    def wait(self, job_id: str, states: tuple, timeout_s: float) -> dict:
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.job(job_id)
            if job.get("JobState") in states or time.monotonic() > deadline:
                return job
            time.sleep(1)

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _conf(folder: Path, host: str) -> str:
    return f"""ClusterName=softpool3dtest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
AuthInfo=socket={folder / 'munge.socket'}
StateSaveLocation={folder / 'state'}
SlurmdSpoolDir={folder / 'spool'}
SlurmctldPidFile={folder / 'slurmctld.pid'}
SlurmdPidFile={folder / 'slurmd.pid'}
SlurmctldLogFile={folder / 'slurmctld.log'}
SlurmdLogFile={folder / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
JobRequeue=1
ReturnToService=2
KillWait=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=600
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
NodeName={host} NodeAddr=127.0.0.1 CPUs=2 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
"""


def start_cluster(folder: Path, timeout_s: float = 60) -> SlurmCluster:
    """munged, slurmctld and slurmd for a one-node cluster of this host (2 CPUs), configured in
    ``folder``; clients reach it through the returned cluster's ``env`` (``SLURM_CONF``)."""
    missing = [name for name in BINARIES if shutil.which(name) is None]
    if missing:
        raise SlurmUnavailable(f"SLURM is not installed ({', '.join(missing)} missing; .ci/install_slurm installs it)")
    if os.geteuid() != 0:
        raise SlurmUnavailable("slurmd must run as root to start jobs, and the tests do not run as root")
    host = socket.gethostname()
    for sub in ("state", "spool", "munge"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    key = folder / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    conf = folder / "slurm.conf"
    conf.write_text(_conf(folder, host))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    for name in list(env):
        if name.startswith(("SLURM_", "SBATCH_", "SRUN_")) and name != "SLURM_CONF":
            del env[name]
    cluster = SlurmCluster(folder, env)
    daemons = [
        ["munged", "--foreground", "--force", f"--key-file={key}", f"--socket={folder / 'munge.socket'}",
         f"--pid-file={folder / 'munge' / 'munged.pid'}", f"--log-file={folder / 'munge' / 'munged.log'}",
         f"--seed-file={folder / 'munge' / 'munged.seed'}"],
        ["slurmctld", "-D", "-i", "-f", str(conf)],
        ["slurmd", "-D", "-N", host, "-f", str(conf)],
    ]
    for command in daemons:
        log = (folder / f"{command[0]}.out").open("w")
        cluster.processes.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                                  start_new_session=True))
        if command[0] == "munged":
            _wait_for(lambda: (folder / "munge.socket").exists(), timeout_s, cluster, "munged did not open its socket")
        if command[0] == "slurmctld":
            _wait_for(lambda: cluster.run("scontrol", "ping", check=False).stdout.count("UP") > 0, timeout_s, cluster,
                      "slurmctld does not answer scontrol ping")
    _wait_for(lambda: "idle" in cluster.run("sinfo", "--noheader", "-o", "%t", check=False).stdout, timeout_s, cluster,
              "the node did not come up idle in sinfo")
    return cluster


def _wait_for(ready, timeout_s: float, cluster: SlurmCluster, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        dead = [p.args[0] for p in cluster.processes if p.poll() is not None]
        if dead:
            break
        if ready():
            return
        time.sleep(0.5)
    cluster.stop()
    logs = sorted(cluster.folder.glob("*.out")) + sorted(cluster.folder.glob("*.log"))
    tail = " | ".join(f"{log.name}: {' / '.join(log.read_text(errors='replace').splitlines()[-3:])}" for log in logs)
    raise SlurmUnavailable(f"{what} ({tail})")
