"""The study catalogue, generated at build time from :mod:`studies.catalog`.

The directive ``study-catalogue`` (used by ``docs/catalogue.md``) writes one section per paper
and, in it, one section per study of :data:`studies.catalog.STUDIES`: how to run it, its figure,
its groups and devices, and a table of its claims -- id, source, statement, role -- read from the
:class:`studies.claims.ClaimSpec` constants of the study's module (and, for a study that is a
package, of its submodules), in the order they are declared. Nothing is copied by hand, so the
page cannot drift from the code.

A ``§N.M`` in a claim's source becomes a link to the section of the theory notes that derives it
(``docs/theory/<thread>.md``, label ``(<thread>-sN-M)=``), falling back to ``§N`` when ``§N.M`` has
no label of its own; ``notes <thread> §...`` switches the thread. Where the note or the label does
not exist yet, the text stays plain.

A study module that fails to import stops the build with the study's name, the module and the
error (an :class:`~sphinx.errors.ExtensionError`), never a silently missing table.

Options: ``:catalog:`` the module holding ``STUDIES`` and ``PAPERS`` (default ``studies.catalog``;
the tests point it at a broken catalogue).
"""
from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx import addnodes
from sphinx.errors import ExtensionError
from sphinx.util.docutils import SphinxDirective

LABEL = re.compile(r"^\(([A-Za-z0-9_.:-]+)\)=\s*$", re.M)
CITE = re.compile(r"notes\s+([a-z_]+)|§\s*(\d+(?:\.\d+)*)")


def claim_specs(module_name: str, study: str) -> list:
    """The claims ``<study>.*`` a study declares (:func:`studies.claims.declared_claims`, which
    imports its module's package and every submodule), in declaration order, each once."""
    from studies.claims import declared_claims

    package = module_name.rsplit(".", 1)[0] if module_name.count(".") > 1 else module_name
    return [spec for cid, spec in declared_claims([package, module_name]).items() if cid.startswith(study + ".")]


def theory_labels(srcdir: Path) -> dict[str, set[str]]:
    """The labels of each theory note present: ``{thread: {label, ...}}``."""
    out = {}
    for note in sorted((srcdir / "theory").glob("*.md")):
        out[note.stem] = set(LABEL.findall(note.read_text(encoding="utf-8")))
    return out


def _label_for(thread: str, section: str, labels: dict[str, set[str]]) -> str | None:
    parts = section.split(".")
    for k in range(len(parts), 0, -1):
        label = f"{thread}-s{'-'.join(parts[:k])}"
        if label in labels.get(thread, ()):
            return label
    return None


_INLINE = re.compile(r"``(.+?)``|:[a-z]+(?::[a-z]+)?:`~?(.+?)`")


def _inline(text: str) -> list[nodes.Node]:
    """A docstring's first paragraph as nodes: ````code```` and ``:role:`target``` become literals,
    the rest stays text (no other markup is interpreted)."""
    out, pos = [], 0
    for m in _INLINE.finditer(text):
        out.append(nodes.Text(text[pos:m.start()]))
        out.append(nodes.literal(text=m.group(1) or m.group(2)))
        pos = m.end()
    out.append(nodes.Text(text[pos:]))
    return out


def _para(*children) -> nodes.paragraph:
    p = nodes.paragraph()
    p.extend(children)
    return p


class StudyCatalogue(SphinxDirective):
    has_content = False
    option_spec = {"catalog": directives.unchanged}

    def run(self):
        catalog_name = self.options.get("catalog", "studies.catalog")
        try:
            catalog = importlib.import_module(catalog_name)
        except Exception as exc:
            raise ExtensionError(f"study catalogue: cannot import {catalog_name}: "
                                 f"{type(exc).__name__}: {exc}") from exc
        self.env.note_dependency(str(Path(catalog.__file__).resolve()))
        labels = theory_labels(Path(self.env.srcdir))
        for note in (Path(self.env.srcdir) / "theory").glob("*.md"):
            self.env.note_dependency(str(note))

        studies = list(catalog.STUDIES)
        out = []
        for thread, paper in catalog.PAPERS.items():
            entries = [e for e in studies if e.thread == thread]
            if not entries:
                continue
            sec = self._section(f"catalogue-{thread}", f"{thread}: {paper}")
            for entry in entries:
                sec += self._study(entry, labels)
            out.append(sec)
        return out

    def _section(self, ident: str, title: str) -> nodes.section:
        sec = nodes.section(ids=[nodes.make_id(ident)])
        sec += nodes.title(text=title)
        return sec

    def _study(self, entry, labels) -> nodes.section:
        try:
            specs = claim_specs(entry.module, entry.name)
            module = sys.modules[entry.module]
        except Exception as exc:
            raise ExtensionError(f"study catalogue: study {entry.name!r}: cannot import its module "
                                 f"{entry.module!r}: {type(exc).__name__}: {exc}") from exc
        for mod in list(sys.modules.values()):
            f = getattr(mod, "__file__", None)
            if f and getattr(mod, "__name__", "").startswith(entry.module):
                self.env.note_dependency(str(Path(f).resolve()))

        sec = self._section(f"study-{entry.name}", entry.name)
        command = " ".join(["python -m", entry.runner, *entry.args])
        facts = [nodes.Text("Run: "), nodes.literal(text=command), nodes.Text(" (add "),
                 nodes.literal(text="--quick"), nodes.Text(" for a small run); figure: "),
                 nodes.literal(text=entry.figure), nodes.Text(f"; devices: {', '.join(entry.devices)}")]
        if entry.groups:
            facts += [nodes.Text("; store groups ("), nodes.literal(text="--parts"), nodes.Text("): "),
                      nodes.Text(", ".join(entry.groups))]
        if entry.reads:
            facts += [nodes.Text("; reads the store of "), nodes.literal(text=entry.reads)]
        if entry.trains:
            facts += [nodes.Text("; trains a model")]
        if entry.needs:
            facts += [nodes.Text(f"; needs: {', '.join(entry.needs)}")]
        facts.append(nodes.Text("."))
        sec += _para(*facts)
        summary = " ".join((module.__doc__ or "").strip().split("\n\n", 1)[0].split())
        if summary:
            sec += _para(*_inline(summary))
        if not specs:
            sec += _para(nodes.Text("This study declares no ClaimSpec constants."))
            return sec
        sec += self._table(entry, specs, labels)
        return sec

    def _source(self, text: str, thread: str, labels) -> list[nodes.Node]:
        out, pos, current = [], 0, thread
        for m in CITE.finditer(text):
            if m.group(1):
                current = m.group(1)
                continue
            label = _label_for(current, m.group(2), labels)
            if label is None:
                continue
            out.append(nodes.Text(text[pos:m.start()]))
            ref = addnodes.pending_xref("", refdomain="std", reftype="ref", reftarget=label, refexplicit=True,
                                        refwarn=True, refdoc=self.env.docname)
            ref += nodes.inline(text=m.group(0), classes=["xref", "std", "std-ref"])
            out.append(ref)
            pos = m.end()
        out.append(nodes.Text(text[pos:]))
        return out

    def _table(self, entry, specs, labels) -> nodes.table:
        widths = (22, 30, 40, 8)
        table = nodes.table(classes=["catalogue-claims"])
        group = nodes.tgroup(cols=len(widths))
        table += group
        for w in widths:
            group += nodes.colspec(colwidth=w)
        head = nodes.thead()
        group += head
        row = nodes.row()
        for name in ("claim", "source", "statement", "role"):
            row += nodes.entry("", _para(nodes.Text(name)))
        head += row
        body = nodes.tbody()
        group += body
        for spec in specs:
            row = nodes.row(ids=[nodes.make_id(f"claim-{spec.id}")])
            row += nodes.entry("", _para(nodes.literal(text=spec.id)))
            row += nodes.entry("", _para(*self._source(spec.source, entry.thread, labels)))
            row += nodes.entry("", _para(nodes.Text(spec.statement)))
            row += nodes.entry("", _para(nodes.Text(spec.role)))
            body += row
        return table


def _always_outdated(app, env, added, changed, removed):
    """Re-read the page with the directive on every build (the catalogue lives in Python)."""
    return [doc for doc in env.found_docs if doc == "catalogue"]


def setup(app):
    app.add_directive("study-catalogue", StudyCatalogue)
    app.connect("env-get-outdated", _always_outdated)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
