"""Predict the action classes of videos with a checkpoint (``--help`` for options); the logic is
:mod:`softpool3d.engine.inference.predict_command`.

    python tools/predict.py CHECKPOINT INPUT... [--top-k 5] [--window 2 --stride 1] [--out preds.json]
"""
import sys

from softpool3d.engine.cli import predict_main

if __name__ == "__main__":
    sys.exit(predict_main())
