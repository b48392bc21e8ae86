"""Prebuild the fused SoftPool extension into torch's extensions cache (``TORCH_EXTENSIONS_DIR``):
the CPU build (which CPU tensors use), and the CUDA build when CUDA is available, showing the full
compiler log.

    python tools/build_extension.py
    python tools/build_extension.py --cpu-only
"""
from __future__ import annotations

import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-only", action="store_true", help="build without the CUDA kernel")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from softpool3d import extension

    for with_cuda in (False, True) if extension.cuda_available() and not args.cpu_only else (False,):
        module = extension.build(with_cuda, verbose=True)
        logging.info("built %s (%s)", module.__file__, "CPU + CUDA" if with_cuda else "CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
