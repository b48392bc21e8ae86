"""Training throughput of a config, 1 process vs N processes (gloo on the CPU, NCCL on GPUs).

    python tools/bench_train.py [CONFIG] [--steps 20] [--processes 2] [key=value ...]

Runs the training entry point (what ``tools/train.py`` runs) for ``--steps`` optimizer steps (one
epoch, no validation or test) as a plain single process and under ``torchrun --nproc_per_node=N``, reads the clips/s each run
wrote to ``metrics.json`` (mean over the steps after the first) and prints both with their ratio. The per-process batch is the config's, so N processes
train N times as many clips per step.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

# ``python -c`` of what tools/train.py runs: the benchmark works without the checkout's tools/
TRAIN = ["-c", "import sys; from softpool3d.engine.cli import train_main; sys.exit(train_main())"]


def run(config, overrides, processes, steps, output):
    name = f"bench_{processes}"
    args = [*TRAIN, *([config] if config else []), *overrides, f"output_dir={output}", f"name={name}",
            "train.epochs=1", f"train.limit_steps_per_epoch={steps}", "train.val_every=1000",
            "train.test_after_train=false"]
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", "--no-python",
                     sys.executable]
    subprocess.run(launcher + args, check=True, stdout=subprocess.DEVNULL, env={**os.environ})
    return json.loads((Path(output) / name / "metrics.json").read_text())["clips_per_s"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default=None)
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    if args.config is not None and "=" in args.config:
        args.overrides.insert(0, args.config)
        args.config = None
    with tempfile.TemporaryDirectory() as output:
        one = run(args.config, args.overrides, 1, args.steps, output)
        many = run(args.config, args.overrides, args.processes, args.steps, output)
    print(f"{'processes':>10} {'clips/s':>10} {'ratio':>7}")
    print(f"{1:>10} {one:>10.1f} {1.0:>7.2f}")
    print(f"{args.processes:>10} {many:>10.1f} {many / one:>7.2f}")


if __name__ == "__main__":
    main()
