"""Griffe extension: a Google-style `Example:` section is read as `Examples:`.

The docstrings of bilevel head their doctests `Example:` (Google style, as napoleon reads it);
griffe knows only `Examples:` and would render the singular as an admonition of Markdown, in
which `>>>` lines are not code. Nothing else of the docstrings is changed.
"""
from __future__ import annotations

import re
from typing import Any

import griffe

EXAMPLE = re.compile(r"^(?P<indent>[ \t]*)Example:[ \t]*$", re.MULTILINE)


class ExampleSections(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = EXAMPLE.sub(r"\g<indent>Examples:", obj.docstring.value)
