"""Training throughput, 1 process vs N (``--help`` for options); the logic is :mod:`softpool3d.benchmarks.train`."""
import sys

from softpool3d.benchmarks.train import main

if __name__ == "__main__":
    sys.exit(main())
