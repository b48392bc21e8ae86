"""The training engine, in rooms by job: ``training`` (the loop and its switches), ``evaluation`` (the
test and its metrics), ``inference`` (prediction, streams, explanations, export) and ``processes``
(process groups, locks, signals, loaders, devices). Beside them: the config and the one place that
maps it to objects (``builders``), the checkpoint file format, the run folder's layout, the clip
normalizer and the command lines (``cli``).

Imports ``softpool3d.models`` and ``softpool3d.datasets``; nothing below it imports the engine.
"""
