"""mkdocs hook: `<!-- bilevel-help -->` and `<!-- bilevel-help: COMMAND -->` in a page become the
`bilevel --help` / `bilevel COMMAND --help` text of the installed parser, so that the command-line
page cannot fall behind the code."""
from __future__ import annotations

import argparse
import importlib
import os
import re

MARKER = re.compile(r"<!-- bilevel-help(?::\s*(?P<command>[\w-]+))?\s*-->")


def _cli():
    """The module of the `bilevel` command: `bilevel.cli`, or `bilevel.bench.cli` where it lives there."""
    try:
        return importlib.import_module("bilevel.cli")
    except ModuleNotFoundError:
        return importlib.import_module("bilevel.bench.cli")


def _help(command: str | None) -> str:
    os.environ["COLUMNS"] = "80"          # argparse wraps at the terminal's width: make it fixed
    parser = _cli().build_parser()
    if command is None:
        return parser.format_help()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            if command not in action.choices:
                raise ValueError(f"docs: unknown command in <!-- bilevel-help: {command} -->")
            return action.choices[command].format_help()
    raise ValueError("docs: the bilevel parser has no subcommands")


def on_page_markdown(markdown: str, page, config, files) -> str:
    return MARKER.sub(lambda m: "```text\n" + _help(m.group("command")).rstrip() + "\n```", markdown)
