"""The documentation: the MkDocs site builds in strict mode, and the README's links resolve.

The site (``mkdocs.yml``, pages in ``docs/``) fails to build on any warning: a link to a page or
an anchor that does not exist, a page missing from the navigation, an API reference that does not
resolve. The README is read on GitHub and PyPI, not built, so its relative links are checked here
against the files of the repository (and their anchors against the target's headings).
"""
from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]

# [text](target) and [text](target "title"), images included; reference definitions `[x]: target`
_INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s.*)?$", re.MULTILINE)
_FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.MULTILINE)


def _load_hook(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "docs" / "hooks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: markup dropped, lower case, punctuation removed, spaces
    to hyphens."""
    text = re.sub(r"[`*]|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", heading)
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def relative_links(markdown: str) -> list[str]:
    """Every link target of ``markdown`` outside code that is not a URL (scheme or ``//``)."""
    prose = _CODE_SPAN.sub("", _FENCE.sub("", markdown))
    targets = _INLINE_LINK.findall(prose) + _REFERENCE_LINK.findall(prose)
    return [t for t in targets if not re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*:|//", t)]


def broken_links(markdown_file: Path) -> list[str]:
    """The relative links of ``markdown_file`` whose file, or whose anchor in a Markdown file,
    does not exist: one line each, ``target: why``."""
    broken = []
    for target in relative_links(markdown_file.read_text(encoding="utf-8")):
        path, _, anchor = target.partition("#")
        resolved = (markdown_file.parent / path).resolve() if path else markdown_file
        if not resolved.exists():
            broken.append(f"{target}: no file {resolved}")
        elif anchor and resolved.suffix == ".md":
            slugs = {github_slug(h) for h in _HEADING.findall(_FENCE.sub("", resolved.read_text(encoding="utf-8")))}
            if anchor not in slugs:
                broken.append(f"{target}: no heading #{anchor} in {resolved.name}")
    return broken


def test_readme_links_resolve_to_files_and_headings():
    readme = ROOT / "README.md"
    assert relative_links(readme.read_text(encoding="utf-8")), "README.md links into the docs"
    assert broken_links(readme) == []


def test_a_broken_link_is_found(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text("# A page\n\n## Its part\n")
    page = tmp_path / "README.md"
    page.write_text(
        "[ok](docs/page.md) [ok](docs/page.md#its-part) [web](https://example.org/x.md) `[code](gone.md)`\n"
        "[gone](docs/gone.md) [bad anchor](docs/page.md#elsewhere)\n"
    )
    assert [line.split(":")[0] for line in broken_links(page)] == ["docs/gone.md", "docs/page.md#elsewhere"]


def test_github_slugs_match_githubs_anchors():
    assert github_slug("The demo run") == "the-demo-run"
    assert github_slug("SoftPool in any network (`softpool3d.replace_pooling`)") == (
        "softpool-in-any-network-softpool3dreplace_pooling"
    )


def test_lists_written_as_on_github_render_as_lists():
    github_lists = _load_hook("github_lists").github_lists
    assert github_lists("Text:\n- a\n  - b\n  c\n- d") == "Text:\n\n- a\n    - b\n  c\n- d"
    assert github_lists("```\nText:\n- a\n```") == "```\nText:\n- a\n```"


def test_the_api_reference_sees_the_installed_package_layout():
    package_dirs = _load_hook("package_layout").package_dirs(ROOT / "setup.cfg")
    assert package_dirs["softpool3d.models"] == "models"
    assert package_dirs["softpool3d.datasets"] == "datasets"


def test_the_site_builds_in_strict_mode(tmp_path):
    assert importlib.util.find_spec("mkdocs"), "the docs tools come with the test extra: pip install -e '.[test]'"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    log = done.stdout + done.stderr
    problems = [line for line in log.splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert done.returncode == 0 and not problems, log
    assert (tmp_path / "site" / "benchmarks" / "index.html").exists()
    api = (tmp_path / "site" / "api" / "index.html").read_text(encoding="utf-8")
    assert "softpool3d.models.build_model" in api and "softpool3d.ops.soft_pool3d" in api
