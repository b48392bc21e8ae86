"""The GPU validation as one prepared command (``--help``; docs/gpu.md); the logic is
:mod:`softpool3d.benchmarks.gpu_check`."""
import sys

from softpool3d.benchmarks.gpu_check.orchestrate import main

if __name__ == "__main__":
    sys.exit(main())
