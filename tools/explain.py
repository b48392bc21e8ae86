"""Grad-CAM heat maps and SoftPool pictures of a checkpoint on videos (``--help`` for options); the logic is
:mod:`softpool3d.engine.inference.explain` and :mod:`softpool3d.engine.inference.explain_command`.

    python tools/explain.py CHECKPOINT VIDEO... --out DIR [--class NAME] [--pool-layer NAME]
"""
import sys

from softpool3d.engine.cli import explain_main

if __name__ == "__main__":
    sys.exit(explain_main())
