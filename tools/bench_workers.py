"""DataLoader worker start methods (``--help`` for options); the logic is :mod:`softpool3d.benchmarks.workers`."""
import sys

from softpool3d.benchmarks.cli import workers_main

if __name__ == "__main__":
    sys.exit(workers_main())
