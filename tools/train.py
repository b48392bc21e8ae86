"""Train a video action recognizer: ``[torchrun --nproc_per_node=N] tools/train.py [CONFIG] [key=value ...]``.

Without arguments: the demo config (generated demo videos, r3d_18 with SoftPool on the CPU).
"""
import sys

from softpool3d.engine.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
