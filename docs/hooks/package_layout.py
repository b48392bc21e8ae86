"""MkDocs hook: lets mkdocstrings find ``softpool3d.models`` and ``softpool3d.datasets``.

setup.cfg's ``package_dir`` installs the top-level folders ``models/`` and ``datasets/`` as
subpackages of ``softpool3d``; griffe (mkdocstrings' Python reader) reads source folders and knows
nothing of that mapping. This hook lays out, in a temporary folder, a ``softpool3d`` package as the
installed one is (links to ``softpool3d/*`` and to each mapped folder) and points mkdocstrings there.
"""
from __future__ import annotations

import configparser
import shutil
import tempfile
from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.plugins import event_priority

PACKAGE = "softpool3d"
_layout: Path | None = None


def package_dirs(setup_cfg: Path) -> dict[str, str]:
    """setup.cfg's ``[options] package_dir`` as ``{"softpool3d.models": "models", ...}``."""
    parser = configparser.ConfigParser()
    parser.read(setup_cfg)
    lines = parser.get("options", "package_dir", fallback="").strip().splitlines()
    pairs = (line.split("=", 1) for line in lines if "=" in line)
    return {name.strip(): folder.strip() for name, folder in pairs}


def lay_out_package(root: Path, target: Path) -> None:
    """Links ``target/softpool3d`` to the installed layout of the sources under ``root``."""
    package = target / PACKAGE
    package.mkdir()
    for entry in (root / PACKAGE).iterdir():
        (package / entry.name).symlink_to(entry)
    for name, folder in package_dirs(root / "setup.cfg").items():
        if name.startswith(PACKAGE + "."):
            (package / name.split(".", 1)[1]).symlink_to(root / folder)


@event_priority(100)  # before mkdocstrings' own on_config, which may start the handler
def on_config(config: MkDocsConfig) -> MkDocsConfig:
    global _layout
    _layout = Path(tempfile.mkdtemp(prefix="softpool3d-docs-"))
    lay_out_package(Path(config.config_file_path).parent, _layout)
    config.plugins["mkdocstrings"].config.handlers.setdefault("python", {})["paths"] = [str(_layout)]
    return config


def on_shutdown() -> None:
    if _layout is not None:
        shutil.rmtree(_layout, ignore_errors=True)
