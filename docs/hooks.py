"""MkDocs hook (mkdocs.yml ``hooks:``) for the API page: the docstrings are written in Sphinx's style, and
its roles (``:func:`run_burn```, ``:class:`~burn_plugin.core.config.BurnConfig```) would show up as a
literal ``:func:`` before the code. This drops the role and keeps the code, as Sphinx shows it (``~``:
the last name only)."""
from __future__ import annotations

import re

_ROLE = re.compile(r":(?:func|class|mod|meth|attr|data|exc|obj|const):<code>(~?)([^<]*)</code>")


def _shown(m: re.Match) -> str:
    tilde, name = m.group(1), m.group(2)
    return f"<code>{name.rsplit('.', 1)[-1] if tilde else name}</code>"


def on_page_content(html: str, **kwargs) -> str:
    return _ROLE.sub(_shown, html)
