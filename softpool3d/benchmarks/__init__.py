"""Benchmarks that print ours against the alternative side by side: the op (``op``), the models
(``models``), the clip loader (``loader``), the dataset index (``index``) and training throughput
(``train``). Each module's ``main`` is the body of a ``tools/bench_*.py`` script.

A layer above the engine: benchmarks import the op, models, datasets and engine; nothing imports them.
"""
