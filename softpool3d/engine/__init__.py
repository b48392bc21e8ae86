"""The training engine: config, train and test loops, checkpoints, processes and devices.

Imports ``softpool3d.models`` and ``softpool3d.datasets``; nothing below it imports the engine.
"""
