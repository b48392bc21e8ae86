"""Drop-in benchmark: torchvision's networks with their own pools vs SoftPool (``--help`` for options);
the logic is :mod:`softpool3d.benchmarks.dropin`."""
import sys

from softpool3d.benchmarks.cli import dropin_main

if __name__ == "__main__":
    sys.exit(dropin_main())
