"""Known docstring warnings: a shrinking list, so ``-W`` guards everything else.

Many docstrings of ``theory/``, ``sim/``, ``studies/``, ``paper_figs/`` and ``gpu/`` were written
as plain text before the site existed, and reStructuredText reads some of that text as markup:
``|x|`` is taken as a substitution, an indented formula as a block quote. Those docstrings are
fixed in their own pass. Until then ``docs/known_docstring_warnings.txt`` lists each such warning
once, as ``LOCATION | MESSAGE``. LOCATION is the docstring's file and object, or the generated
API page, with line numbers removed, because lines move as code is edited.

A warning whose key is on the list is shown as an info line (``known docstring warning: ...``)
and is not counted, so ``-W`` does not fail on it. Every other warning counts as usual: a new
docstring problem, and any warning from the pages under ``docs/`` or the examples. A key is
accepted on the list only if its location is a docstring of one of the five packages or a page
of ``docs/api/generated/``; any other line in the file stops the build.

Each build writes ``known-warnings.txt`` into the output folder, with the listed warnings seen,
the listed warnings that no longer occur (stale: delete those lines), and the eligible warnings
that are not listed. ``tests/docs/test_docs.py`` fails on stale lines after a full build, so the
list only shrinks. ``WORKBENCH_DOCS_KNOWN_WARNINGS=0`` turns the list off and shows every
warning.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from docutils import nodes
from sphinx.errors import ConfigError
from sphinx.util import logging as sphinx_logging
from sphinx.util.logging import get_node_location

ROOT = Path(__file__).resolve().parents[2]
LIST = Path(__file__).resolve().parents[1] / "known_docstring_warnings.txt"
ELIGIBLE = re.compile(r"^((theory|sim|studies|paper_figs|gpu)/\S*\.py:docstring of |docs/api/generated/)")
_LINE = re.compile(r":\d+(?=:|$)")
_TYPE = re.compile(r"\s*\[[a-z0-9_.]+\]$")

logger = sphinx_logging.getLogger(__name__)


def key_of(location: str, message: str) -> str:
    """``LOCATION | MESSAGE``: location relative to the repository, line numbers removed, the
    message on one line without its ``[type]`` suffix."""
    loc = location or ""
    try:
        loc = Path(loc.split(":", 1)[0]).resolve().relative_to(ROOT).as_posix() + (
            ":" + loc.split(":", 1)[1] if ":" in loc else "")
    except ValueError:
        pass
    loc = _LINE.sub("", loc).rstrip(":")
    msg = _TYPE.sub("", " ".join(str(message).split()))
    return f"{loc} | {msg}"


def read_list(path: Path = LIST) -> set[str]:
    if not path.is_file():
        return set()
    out = set()
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if " | " not in line or not ELIGIBLE.match(line):
            raise ConfigError(f"{path.name}:{n}: only docstring warnings of theory/ sim/ studies/ paper_figs/ "
                              f"gpu/ (or of docs/api/generated/) may be listed, as 'LOCATION | MESSAGE': {line!r}")
        out.add(line)
    return out


class _KnownFilter(logging.Filter):
    """First filter of Sphinx's warning handler: a listed warning becomes an info line."""

    def __init__(self, app, known: set[str]):
        super().__init__()
        self.app, self.known = app, known
        self.seen: set[str] = set()
        self.unlisted: set[str] = set()

    def _location(self, record) -> str:
        loc = getattr(record, "location", None)
        if isinstance(loc, tuple):
            docname, lineno = loc
            if not docname:
                return ""
            return f"{self.app.env.doc2path(docname)}:{lineno}" if lineno else str(self.app.env.doc2path(docname))
        if isinstance(loc, nodes.Node):
            return get_node_location(loc) or ""
        if loc and ":" not in str(loc) and self.app.env is not None:
            return str(self.app.env.doc2path(loc))
        return str(loc or "")

    def filter(self, record) -> bool:
        if record.levelno < logging.WARNING:
            return True
        try:
            message = record.msg % record.args if record.args else str(record.msg)
        except (TypeError, ValueError):
            message = str(record.msg)
        key = key_of(self._location(record), message)
        if not ELIGIBLE.match(key):
            return True
        if key in self.known:
            self.seen.add(key)
            logger.info("known docstring warning: %s", key)
            return False
        self.unlisted.add(key)
        return True


def _install(app) -> None:
    if os.environ.get("WORKBENCH_DOCS_KNOWN_WARNINGS", "1") == "0":
        return
    known = read_list()
    flt = _KnownFilter(app, known)
    for handler in logging.getLogger(sphinx_logging.NAMESPACE).handlers:
        if isinstance(handler, sphinx_logging.WarningStreamHandler):
            handler.filters.insert(0, flt)
    app._workbench_known = flt


def _report(app, exc) -> None:
    flt = getattr(app, "_workbench_known", None)
    if flt is None or exc is not None:
        return
    stale = sorted(flt.known - flt.seen)
    lines = [f"# listed and seen: {len(flt.seen)}", *sorted(flt.seen),
             f"# listed but not seen (stale: delete these lines from {LIST.name}): {len(stale)}", *stale,
             f"# eligible but not listed (they failed the build): {len(flt.unlisted)}", *sorted(flt.unlisted)]
    Path(app.outdir).mkdir(parents=True, exist_ok=True)
    (Path(app.outdir) / "known-warnings.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    if flt.seen:
        logger.info("%d known docstring warnings not counted (%s); %d stale", len(flt.seen), LIST.name, len(stale))


def setup(app):
    _install(app)
    app.connect("build-finished", _report)
    return {"version": "1", "parallel_read_safe": False, "parallel_write_safe": True}
