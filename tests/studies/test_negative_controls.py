"""Every claim can fail: for every claim id the catalogue's studies declare, some test breaks
one ingredient and sees that claim fail (it carries ``@pytest.mark.breaks("<id>")``), or the
claim is a consistency check (``ClaimSpec(role="consistency", why=...)``) that says why no
ingredient outside the checked code can break it. This test reads the markers from the test
sources, so a claim without either is named here."""
import ast
from pathlib import Path

from studies.catalog import STUDIES
from studies.claims import CONSISTENCY, declared_claims

TESTS = Path(__file__).resolve().parents[1]


def _modules():
    out = []
    for e in STUDIES:
        parts = e.module.split(".")
        out.append(".".join(parts[:2]) if len(parts) > 2 else e.module)  # a study's package
    return sorted(set(out))


def _breaks_markers() -> dict[str, list[str]]:
    """claim id -> the tests marked as breaking it (``file::function``)."""
    found: dict[str, list[str]] = {}
    for path in sorted(TESTS.rglob("test_*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or not node.name.startswith("test"):
                continue
            for dec in node.decorator_list:
                if isinstance(dec, ast.Call) and ast.unparse(dec.func).endswith("mark.breaks"):
                    for arg in dec.args:
                        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                            found.setdefault(arg.value, []).append(f"{path.relative_to(TESTS)}::{node.name}")
    return found


def _declared():
    names = {e.name for e in STUDIES}
    return {k: v for k, v in declared_claims(_modules()).items() if k.split(".", 1)[0] in names}


def test_every_claim_has_a_negative_control_or_is_a_consistency_check():
    declared = _declared()
    assert len(declared) >= 70, sorted(declared)
    marked = _breaks_markers()
    missing = sorted(cid for cid, spec in declared.items() if spec.role != CONSISTENCY and cid not in marked)
    assert not missing, f"{len(missing)} evidence claim(s) without a negative control: {missing}"


def test_markers_name_claims_that_exist():
    declared = _declared()
    unknown = {cid: tests for cid, tests in _breaks_markers().items() if cid not in declared}
    assert not unknown, f"tests mark claims no study declares: {unknown}"


def test_the_table_of_claims(capsys):
    """The table of every claim id: evidence or consistency, and the test that breaks it (printed
    with -s; the closing note quotes it)."""
    declared, marked = _declared(), _breaks_markers()
    rows = [f"| {cid} | {spec.role} | {', '.join(marked.get(cid, [])) or spec.why} |"
            for cid, spec in sorted(declared.items())]
    print("\n".join(["| claim | role | broken by / why not |", "| --- | --- | --- |", *rows]))
    assert len(rows) == len(declared)
