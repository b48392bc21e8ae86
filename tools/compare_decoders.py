"""Frames of decord builds (one ``--python`` each) against PyAV on the test fixtures; the logic is :mod:`softpool3d.benchmarks.decoders`."""
import sys

from softpool3d.benchmarks.cli import decoders_main

if __name__ == "__main__":
    sys.exit(decoders_main())
