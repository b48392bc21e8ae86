"""The GPU validation as one prepared command (``--help``; README, "GPU validation"); the logic is
:mod:`softpool3d.benchmarks.gpu_check`."""
import sys

from softpool3d.benchmarks.gpu_check import main

if __name__ == "__main__":
    sys.exit(main())
