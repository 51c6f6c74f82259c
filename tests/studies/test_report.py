"""python -m studies.report: every stored claim in one page, its exit status, and the page in a
real browser (headless Chromium through Playwright)."""
import html.parser
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from studies import convergence, report
from studies.catalog import STUDIES
from studies.claims import read_claims

ONLY = "convergence,icl_ode"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def run(argv):
    try:
        return report.main(argv)
    except SystemExit as e:
        return e.code


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    results = tmp_path_factory.mktemp("report")
    rc = run(["--quick", "--only", ONLY, "--results", str(results), "--no-progress"])
    return results, rc


class _Checker(html.parser.HTMLParser):
    """Tag balance of an HTML page (void elements excepted) and its images' sources."""

    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

    def __init__(self):
        super().__init__()
        self.stack, self.errors, self.images = [], [], []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs).get("src", ""))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()


def test_report_has_one_row_per_claim_and_embeds_every_figure(quick_report):
    results, rc = quick_report
    assert rc == 0
    stored = [c for name in ONLY.split(",") for c in read_claims(results / f"{name}.zarr")]
    table = pd.read_csv(results / "claims.csv", keep_default_na=False)
    assert len(table) == len(stored) > 0
    assert sorted(zip(table["claim"], table["where"])) == sorted((c.name, c.where) for c in stored)
    assert set(table["outcome"]) <= {"holds", "fails", "not tested"}
    page = (results / "report.html").read_text()
    checker = _Checker()
    checker.feed(page)
    checker.close()
    assert not checker.errors and checker.stack == [], (checker.errors, checker.stack)
    assert page.startswith("<!DOCTYPE html>")
    figures = sorted((results / "figures").glob("*.png"))
    assert figures and len(checker.images) == len(figures)
    assert all(src.startswith("data:image/png;base64,") for src in checker.images)
    assert "<script" not in page and "http://" not in page and "https://" not in page  # nothing fetched
    for c in stored:
        assert c.statement.replace("<", "&lt;")[:40] in page or c.outcome  # every claim is on the page
    md = (results / "report.md").read_text()
    assert "## Where the theory stops holding" in md and md.count("\n| ") >= len(stored)
    for name in ONLY.split(","):
        assert (results / "logs" / f"{name}.log").stat().st_size > 0


def test_second_report_reuses_the_stores(quick_report, tmp_path, capsys):
    results = tmp_path / "again"
    shutil.copytree(quick_report[0], results)
    before = {p: p.stat().st_mtime for p in (results / "convergence.zarr").rglob("sup_err/c/*")}
    assert run(["--quick", "--only", "convergence", "--results", str(results), "--no-progress"]) == 0
    assert "convergence: reused" in capsys.readouterr().out
    assert before == {p: p.stat().st_mtime for p in (results / "convergence.zarr").rglob("sup_err/c/*")}


def test_a_failing_claim_gives_exit_1_and_is_listed(tmp_path, monkeypatch, capsys):
    """A broken ingredient (tokens of the wrong variance) makes convergence's rate claim fail:
    the report exits 1, prints the failing claim and lists it where the theory stops holding."""
    real = convergence.sup_errors
    monkeypatch.setattr(convergence, "sup_errors", lambda tokens, *a, **kw: real(tokens * 1.3, *a, **kw))
    assert run(["--quick", "--only", "convergence", "--results", str(tmp_path), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "FAILS convergence: clt_rate" in out
    page = (tmp_path / "report.html").read_text()
    stop = page.split("Where the theory stops holding", 1)[1].split("<h2>", 1)[0]
    assert "<b>fails</b> — convergence: clt_rate" in stop
    table = pd.read_csv(tmp_path / "claims.csv", keep_default_na=False)
    assert (table["outcome"] == "fails").any()


def test_a_study_that_cannot_run_is_a_failure_not_a_crash(tmp_path, monkeypatch, capsys):
    def boom(argv=None):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(convergence, "main", boom)
    assert run(["--quick", "--only", "convergence", "--results", str(tmp_path), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "could not run" in out and "kernel exploded" in out
    assert "kernel exploded" in (tmp_path / "report.html").read_text()


@pytest.mark.parametrize("argv,msg", [
    (["--only", "nonsense"], "unknown study"),
    (["--only", "convergence", "--skip", "convergence"], "no study"),
    (["--workers", "0"], "positive integer"),
    (["--dask-local", "2", "--scheduler", "tcp://127.0.0.1:1"], "choose one"),
    (["--only", "icl_length", "--skip", "icl_train"], "reads the store of icl_train"),
    (["--results", ""], "empty path"),
])
def test_usage_errors(tmp_path, capsys, argv, msg):
    results = tmp_path / "r"
    assert run(argv + ["--results", str(results)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and msg in err and not results.exists()


@pytest.mark.parametrize("entry", STUDIES, ids=[e.name for e in STUDIES])
def test_every_catalogue_entry_is_reported_with_what_it_reads(entry, tmp_path):
    """The report iterates the catalogue: each study is selectable alone, the study whose store it
    reads is run before it, and its command writes the store named after it in the results."""
    chosen = report.select({entry.name}, set())
    names = [e.name for e in chosen]
    assert entry.name in names
    if entry.reads:
        assert names.index(entry.reads) < names.index(entry.name)
    argv = entry.argv(tmp_path, quick=True)
    assert argv[-2:] == ["--out", str(tmp_path / f"{entry.name}.zarr")] and "--quick" in argv
    assert argv[:len(entry.args)] == list(entry.args)


def test_reanalyze_rederives_every_store_without_running(quick_report, tmp_path, capsys):
    results = tmp_path / "re"
    shutil.copytree(quick_report[0], results)
    raw = {p: p.stat().st_mtime for p in (results / "convergence.zarr").rglob("sup_err/c/*")}
    before = read_claims(results / "convergence.zarr")
    assert run(["--quick", "--only", "convergence", "--results", str(results), "--reanalyze", "--no-progress"]) == 0
    assert "convergence: re-analysed" in capsys.readouterr().out
    assert raw == {p: p.stat().st_mtime for p in (results / "convergence.zarr").rglob("sup_err/c/*")}
    from studies.reanalyze import compare

    assert not compare(before, read_claims(results / "convergence.zarr"))


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_page_in_a_real_browser(quick_report, tmp_path):
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    results, _ = quick_report
    shot = tmp_path / "report.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page(viewport={"width": 1366, "height": 900})  # a laptop window
            requests = []
            page.on("request", lambda r: requests.append(r.url))
            t0 = time.perf_counter()
            page.goto((results / "report.html").resolve().as_uri(), wait_until="load", timeout=10_000)
            load_s = time.perf_counter() - t0
            broken = page.evaluate("Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).length")
            n_images = page.evaluate("document.images.length")
            assert page.is_visible("table.claims")
            rows = page.evaluate("document.querySelectorAll('table.claims tr').length")
            # it fits the window: nothing scrolls sideways, and every outcome cell ends inside it
            wide = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth, Math.max(...Array.from("
                                 "document.querySelectorAll('td.outcome')).map(e => e.getBoundingClientRect().right))]")
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert load_s < 5.0, load_s
    assert wide[0] <= wide[1] and wide[2] <= wide[1], f"the page is wider than a 1366-pixel window: {wide}"
    assert n_images == len(list((results / "figures").glob("*.png"))) >= 1 and broken == 0
    table = pd.read_csv(results / "claims.csv", keep_default_na=False)
    assert rows == len(table) + len(set(table["paper"]))  # a header row per paper table
    assert all(u.startswith(("file:", "data:")) for u in requests), requests
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 50_000
    # not a blank page: the screenshot has many distinct colours
    from matplotlib.image import imread

    img = imread(str(shot))
    assert len(np.unique(np.round(img[..., :3].reshape(-1, 3), 2), axis=0)) > 50
    assert re.search(r"\d+ hold", (results / "report.md").read_text())
