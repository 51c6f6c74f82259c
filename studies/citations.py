"""Citations of the theory notes: ``notes <page> §<section>``, found, resolved and linked.

Every prediction the workbench tests is derived in the theory notes of the repository,
``docs/theory/<page>.md`` (one page per paper: ``token_sample``, ``random_features``,
``icl_regression``, ``tensor_attention``, ``token_selection``), in numbered sections, each with a
MyST label on the line before its heading::

    (token_sample-s2-1)=
    ## §2.1 Uniform convergence on a ball

Code, docstrings and the claims' sources cite them as ``notes token_sample §2.1``; one citation
may list several sections of its page, ``notes random_features §3.4, §4.3`` or a range
``notes tensor_attention §2.3-2.5`` (both ends are checked), and a section may carry a suffix
the page numbers inside it, ``notes tensor_attention §5 item 16``. This
module is the one home of that convention: :func:`find` lists the citations in a text,
:func:`label` and :func:`anchor` give a section's label and its HTML id (Sphinx turns ``_`` and
``.`` into ``-``), :func:`labels` reads the labels a page defines, :func:`resolves` says whether a
citation points to an existing section, and :func:`url` links it into the built site or, when
the site is not built, to the page's source.
"""
from __future__ import annotations

import functools
import re
from pathlib import Path

__all__ = ["PAGES", "CITATION", "DOCS", "find", "label", "anchor", "labels", "resolves", "url"]

PAGES = ("token_sample", "random_features", "icl_regression", "tensor_attention", "token_selection")
_REF = r"\d+(?:\.\d+)*[a-z]?"
CITATION = re.compile(r"notes (" + "|".join(PAGES) + r") (§" + _REF
                      + r"(?:(?:, |; |/| and )§" + _REF + r"|(?:-|–)§?" + _REF + r")*)")
DOCS = Path(__file__).resolve().parent.parent / "docs"
_LABEL = re.compile(r"^\(([A-Za-z0-9_]+-s[0-9a-z-]+)\)=\s*$", re.M)


def find(text: str) -> list[tuple[str, str]]:
    """Every ``(page, section)`` cited in ``text``, in order (each section of a list or range)."""
    out = []
    for m in CITATION.finditer(text or ""):
        out += [(m.group(1), ref) for ref in re.findall(_REF, m.group(2))]
    return out


def label(page: str, section: str) -> str:
    """The MyST label of a section: ``token_sample-s2-1``."""
    return f"{page}-s{section.replace('.', '-')}"


def anchor(page: str, section: str) -> str:
    """The HTML id Sphinx gives the label: ``token-sample-s2-1``."""
    return label(page, section).replace("_", "-").lower()


@functools.cache
def labels(page: str, docs: Path = DOCS) -> frozenset:
    """The section labels defined on a theory page (empty when the page does not exist)."""
    path = Path(docs) / "theory" / f"{page}.md"
    return frozenset(_LABEL.findall(path.read_text(encoding="utf-8"))) if path.exists() else frozenset()


def resolves(page: str, section: str, docs: Path = DOCS) -> bool:
    """Whether ``notes <page> §<section>`` points to a section the page defines."""
    return label(page, section) in labels(page, Path(docs))


def url(page: str, section: str, docs: Path = DOCS) -> str:
    """A ``file:`` link to the section: into the built site (``docs/_build/html``) when it is
    there, else to the page's Markdown source."""
    docs = Path(docs)
    built = docs / "_build" / "html" / "theory" / f"{page}.html"
    if built.exists():
        return f"{built.resolve().as_uri()}#{anchor(page, section)}"
    return (docs / "theory" / f"{page}.md").resolve().as_uri()
