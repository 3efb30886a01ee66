"""mkdocs hook: `<!-- bilevel-solvers -->` in a page becomes the table of the registered solvers
(`bilevel.solvers.table`: name, method, cost of one step, minibatches), made from what each
solver class declares, so that the page cannot fall behind the registry."""
from __future__ import annotations

import re

MARKER = re.compile(r"<!-- bilevel-solvers -->")


def on_page_markdown(markdown: str, page, config, files) -> str:
    from bilevel.solvers import table

    return MARKER.sub(lambda _: table(), markdown)
