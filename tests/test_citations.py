"""Every citation of the theory notes resolves: the source tree (code, docstrings, tests,
examples, the docs and the README) cites ``notes <page> §<section>`` and every such section
exists on its page (:mod:`studies.citations`); no citation of the specification notes that
are not in the repository is left. The claims the studies emit are checked by the contract
(``studies.checks.check_citations``) on every ``--quick`` store."""
import re
from pathlib import Path

from studies import citations

ROOT = Path(__file__).resolve().parents[1]
TREES = ("theory", "sim", "gpu", "studies", "paper_figs", "tests", "scripts", "examples", "docs")
OLD = re.compile(r"\b[Ss]pec(?:ification)?\s+(?:(?:" + "|".join(citations.PAGES) + r")\s+)?§|\bspec number\b")


def _files():
    for tree in TREES:
        for path in sorted((ROOT / tree).rglob("*")):
            if path.suffix in (".py", ".md", ".rst") and "_build" not in path.parts and "auto_examples" not in \
                    path.parts and "generated" not in path.parts:
                yield path
    yield ROOT / "README.md"


def test_every_citation_in_the_tree_resolves(capsys):
    cited, broken = 0, []
    for path in _files():
        text = path.read_text(encoding="utf-8")
        for page, section in citations.find(text):
            cited += 1
            if not citations.resolves(page, section):
                broken.append(f"{path.relative_to(ROOT)}: notes {page} §{section}")
    print(f"{cited} citations of the theory notes in the tree")
    assert cited >= 200, cited
    assert not broken, f"{len(broken)} citation(s) point nowhere: {broken}"


def test_no_citation_of_the_specification_notes_is_left():
    left = [f"{path.relative_to(ROOT)}:{i}: {line.strip()[:90]}" for path in _files() if path.suffix == ".py"
            for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if OLD.search(line)]
    assert not left, f"{len(left)} line(s) still cite notes users cannot read: {left[:20]}"


def test_the_resolver_can_fail(tmp_path):
    page = tmp_path / "theory" / "token_sample.md"
    page.parent.mkdir()
    page.write_text("(token_sample-s2-1)=\n## §2.1 A section\n")
    assert citations.resolves("token_sample", "2.1", tmp_path)
    assert not citations.resolves("token_sample", "2.2", tmp_path)
    assert not citations.resolves("icl_regression", "2.1", tmp_path)
    assert citations.anchor("token_sample", "2.1") == "token-sample-s2-1"
