"""The benchmark command lines (softpool3d.benchmarks.cli) describe and offer what the benchmark modules hold."""
import importlib

import pytest

from softpool3d.benchmarks import cli


@pytest.mark.parametrize("name", ["dropin", "loader", "models", "sass", "workers", "decoders"])
def test_the_description_is_the_benchmark_module_docstring(name):
    assert cli.module_doc(name) == importlib.import_module(f"softpool3d.benchmarks.{name}").__doc__


def test_dropin_choices_are_the_benchmarked_networks():
    from softpool3d.benchmarks.dropin import CASES

    assert sorted(cli.DROPIN_CASES) == sorted(CASES)


def test_workers_choices_are_start_methods():
    import multiprocessing

    assert set(cli.START_METHODS) <= set(multiprocessing.get_all_start_methods())
