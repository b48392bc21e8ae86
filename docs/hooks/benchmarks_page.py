"""MkDocs hook: the site's Benchmarks page is the repository's BENCHMARKS.md, as it stands.

BENCHMARKS.md stays at the repository root (every benchmark appends its own section there); this
hook adds it to the site as ``benchmarks.md``, so its text lives in one place.
"""
from __future__ import annotations

from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

BENCHMARKS = "BENCHMARKS.md"


def on_files(files: Files, config: MkDocsConfig) -> Files:
    source = Path(config.config_file_path).parent / BENCHMARKS
    files.append(File.generated(config, "benchmarks.md", abs_src_path=str(source)))
    return files
