"""Multi-view evaluation of a checkpoint: ``[torchrun --nproc_per_node=N] tools/test.py CHECKPOINT [key=value ...]``."""
import sys

from softpool3d.engine.cli import test_main

if __name__ == "__main__":
    sys.exit(test_main())
