"""Sphinx configuration for offterm's API reference (docs/api).

Built in CI with warnings as errors:

    sphinx-build -W --keep-going -b html docs/api <output dir>

Everything comes from the docstrings of the installed ``offterm`` package
(``pip install -e '.[docs]'``); nothing here imports the repository folders.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.addnodes import pending_xref
from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

project = "offterm"
copyright = "offterm contributors"
author = "offterm contributors"

extensions = ["sphinx.ext.autodoc"]

# Docstrings are reST with field lists (``:param x:``, ``:return:``, ``:raises E:``).
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
autodoc_default_options = {"show-inheritance": True}
# ``code`` in single backquotes reads as inline code, as in the Markdown docs.
default_role = "code"
add_module_names = False
python_use_unqualified_type_names = True

html_theme = "alabaster"
html_title = "offterm API reference"
html_theme_options = {
    "description": "Terminal API and plugin contract",
    "page_width": "1180px",
    "sidebar_width": "250px",
}
html_show_sourcelink = False
exclude_patterns = ["_build"]


def _public_target(env: BuildEnvironment, target: str) -> str | None:
    """The documented object a type annotation means, when it names it another way.

    Annotations name classes where they are defined (``offterm.core._engine.terminal.CloseReport``)
    or, under ``TYPE_CHECKING``, by their bare name (``ReaderInfo``).  The reference documents
    each object once, under its public path; find it there by its last name when that is unique.
    """
    name = target.rsplit(".", 1)[-1]
    objects = env.get_domain("py").objects
    found = [full for full in objects if full.rsplit(".", 1)[-1] == name and "._" not in full]
    return found[0] if len(found) == 1 else None


def _resolve_public(app: Sphinx, env: BuildEnvironment, node: pending_xref, contnode: nodes.Element) -> Any:
    if node.get("refdomain") != "py" or not node.get("reftarget", "").removeprefix("~"):
        return None
    target = _public_target(env, node["reftarget"].removeprefix("~"))
    if target is None:
        return None
    domain = env.get_domain("py")
    return domain.resolve_xref(env, node.get("refdoc", ""), app.builder, "obj", target, node, contnode)


class PublicSubmodules(SphinxDirective):
    """``.. offterm-submodules:: PACKAGE``: one section per public submodule, members included.

    Lists the submodules when the page is built, so a module added later (a new kind of
    component in ``offterm.core.contracts``) appears without editing the page.  ``:first:``
    names the ones to put first, in that order; the rest follow alphabetically.  A section's
    title is the module docstring's first line, up to its colon.
    """

    required_arguments = 1
    option_spec = {"first": lambda text: text.split()}

    def run(self) -> list[nodes.Node]:
        package = importlib.import_module(self.arguments[0])
        names = sorted(m.name for m in pkgutil.iter_modules(package.__path__) if not m.name.startswith("_"))
        first = [n for n in self.options.get("first", []) if n in names]
        lines: list[str] = []
        for name in first + [n for n in names if n not in first]:
            module = f"{package.__name__}.{name}"
            doc = (importlib.import_module(module).__doc__ or name).strip().splitlines()[0]
            title = doc.split(":")[0].rstrip(".")
            lines += [title, "~" * len(title), "", f".. automodule:: {module}", "   :members:", ""]
        container = nodes.container()
        nested_parse_with_titles(self.state, StringList(lines, source=self.get_source_info()[0]), container)
        return container.children


def setup(app: Sphinx) -> None:
    app.add_directive("offterm-submodules", PublicSubmodules)
    app.connect("missing-reference", _resolve_public)
