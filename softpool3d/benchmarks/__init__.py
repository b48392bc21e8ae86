"""Benchmarks that print ours against the alternative side by side: the op (``op``), the models
(``models``), the clip loader (``loader``), the dataset index (``index``) and training throughput
(``train``). A ``tools/bench_*.py`` script calls its module's ``main``, or a ``*_main`` of :mod:`.cli`
that parses the arguments before importing the module (and torch) and calls the module's ``run``.

A layer above the engine: benchmarks import the op, models, datasets and engine; nothing imports them.
"""
