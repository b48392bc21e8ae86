"""Start-up and memory with workers (``--help`` for options); the logic is :mod:`softpool3d.benchmarks.startup`."""
import sys

from softpool3d.benchmarks.cli import startup_main

if __name__ == "__main__":
    sys.exit(startup_main())
