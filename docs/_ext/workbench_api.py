"""A quick API reference for quick builds: ``WORKBENCH_DOCS_API=studies.claims,...``.

The full reference (``docs/api/index.md``: recursive autosummary over ``theory``, ``sim``,
``studies`` and ``paper_figs``) accounts for most of a build's time. When ``conf.py`` sets
``workbench_api_modules`` to a list of modules, this extension makes a smaller site instead:

* the autosummary blocks of ``api/index.md`` are replaced, as the page is read, by one
  non-recursive block over the listed modules, so every link to ``api/index`` still resolves;
* their pages are generated into ``api/generated-quick/``, while ``api/generated/`` (a full
  build's pages) is excluded by ``conf.py``.

The tests build the site this way (the browser test searches it for ``z_family``), and a writer can
do the same while working on the prose pages.
"""
from __future__ import annotations

import re
import tempfile
from pathlib import Path

QUICK_DIR = "generated-quick"
_BLOCK = re.compile(r"```\{eval-rst\}\n\.\. autosummary::.*?```\n", re.S)


def _block(modules) -> str:
    items = "\n".join(f"   {m}" for m in modules)
    return f".. autosummary::\n   :toctree: {QUICK_DIR}\n\n{items}\n"


def _generate(app) -> None:
    modules = app.config.workbench_api_modules
    if not modules:
        return
    from sphinx.ext.autodoc.mock import mock
    from sphinx.ext.autosummary.generate import generate_autosummary_docs

    out = Path(app.srcdir) / "api" / QUICK_DIR
    if out.is_dir():  # pages of an earlier quick build's modules would be orphans
        for page in out.glob("*.rst"):
            page.unlink()
    with tempfile.TemporaryDirectory() as tmp, mock(app.config.autosummary_mock_imports):
        src = Path(tmp) / "api_quick.rst"
        src.write_text(_block(modules), encoding="utf-8")
        generate_autosummary_docs([str(src)], output_dir=str(out), app=app, suffix=".rst", overwrite=True)


def _source_read(app, docname, source) -> None:
    modules = app.config.workbench_api_modules
    if not modules or docname != "api/index":
        return
    text, n = _BLOCK.subn("", source[0])
    note = ("\n```{note}\nThis is a quick build (`WORKBENCH_DOCS_API`): only the modules below are "
            "documented.\n```\n\n")
    source[0] = text + note + "```{eval-rst}\n" + _block(modules) + "```\n"


def setup(app):
    app.add_config_value("workbench_api_modules", [], "env")
    app.connect("builder-inited", _generate)
    app.connect("source-read", _source_read)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
