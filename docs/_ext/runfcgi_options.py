"""``.. runfcgi-options::`` renders the option table from django_runfcgi.options.

The reference in the docs is built from the same table as the command's parser, so
the two cannot disagree.
"""

from __future__ import annotations

from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

from django_runfcgi.options import OPTIONS


class RunfcgiOptions(SphinxDirective):
    def run(self) -> list[nodes.Node]:
        lines = []
        for option in OPTIONS:
            lines += [
                f".. option:: {option.name}={option.metavar}, --{option.name}",
                "",
                f"   {option.help}",
                "",
                f"   Default: {option.describe_default()}.",
                "",
            ]
        container = nodes.section()
        self.state.nested_parse(
            StringList(lines, source="django_runfcgi/options.py"), 0, container
        )
        return container.children


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("runfcgi-options", RunfcgiOptions)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
