"""Export a checkpoint's model to ONNX or a torch.export program, checked against PyTorch (``--help``
for options); the logic is :mod:`softpool3d.engine.inference.export`.

    python tools/export.py CHECKPOINT --format onnx --out model.onnx
"""
import sys

from softpool3d.engine.cli import export_main

if __name__ == "__main__":
    sys.exit(export_main())
