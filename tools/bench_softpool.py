"""SoftPool kernel benchmark (``--help`` for options); the logic is :mod:`softpool3d.benchmarks.op`."""
import sys

from softpool3d.benchmarks.cli import op_main

if __name__ == "__main__":
    sys.exit(op_main())
