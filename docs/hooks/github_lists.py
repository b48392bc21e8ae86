"""MkDocs hook: lists written as GitHub renders them render the same on the site.

GitHub starts a list right after a paragraph line and nests a list item indented by two spaces;
Python-Markdown needs a blank line before the list and four spaces of nesting. This hook adds
both to each page's Markdown (outside code fences) before it is rendered, so README-style pages
and BENCHMARKS.md need no second dialect.
"""
from __future__ import annotations

import re

_ITEM = re.compile(r"(?:[-*+]|1\.) ")
_NESTED_ITEM = re.compile(r"  (?:[-*+]|\d+\.) ")


def github_lists(markdown: str) -> str:
    """``markdown`` with a blank line before each list that follows a paragraph line, and the
    items nested by two spaces nested by four."""
    out: list[str] = []
    fenced = False
    for line in markdown.split("\n"):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            if _NESTED_ITEM.match(line):
                line = "  " + line
            elif _ITEM.match(line) and out and out[-1].strip() and not (
                _ITEM.match(out[-1]) or out[-1].startswith(" ")
            ):
                out.append("")
        out.append(line)
    return "\n".join(out)


def on_page_markdown(markdown: str, **kwargs: object) -> str:
    return github_lists(markdown)
