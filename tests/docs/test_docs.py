"""The documentation site: it builds offline with warnings as errors, its study catalogue is
complete, every example runs as a script, and the built pages work in a real browser (headless
Chromium through Playwright) with no request leaving the machine.

One build, the README's third command (``sphinx-build -W --keep-going -b html docs OUT``: every
page, the whole recursive API reference, and the gallery, which runs every example), into a
temporary folder; every test reads it.

Everything is skipped with the reason when the ``docs`` extra is not installed
(``pip install -e ".[docs]"``); the browser test also needs Debian's ``chromium`` and Playwright.
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
EXAMPLE_TIMEOUT_S = 120
BUILD_TIMEOUT_S = 900

_NEEDS = {"sphinx": "sphinx", "myst_parser": "myst-parser", "numpydoc": "numpydoc",
          "sphinx_gallery": "sphinx-gallery", "furo": "furo", "mathjax": "django-static-mathjax"}
MISSING = [pkg for mod, pkg in _NEEDS.items() if importlib.util.find_spec(mod) is None]
requires_docs = pytest.mark.skipif(bool(MISSING), reason=f"the docs extra is not installed (missing: "
                                                         f"{', '.join(MISSING)}; pip install -e '.[docs]')")


def build(out: Path, *, api: str = "1", gallery: bool = True) -> tuple[subprocess.CompletedProcess, float]:
    """``sphinx-build -W --keep-going -b html docs OUT/html`` in a subprocess (doctrees in OUT)."""
    env = {**os.environ, "MPLBACKEND": "Agg", "WORKBENCH_DOCS_API": api, "WORKBENCH_DOCS_RERUN": "1",
           "WORKBENCH_DOCS_GALLERY": "1" if gallery else "0", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", "-d", str(out / "doctrees"),
           str(DOCS), str(out / "html")]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    return res, time.perf_counter() - t0


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    if MISSING:
        pytest.skip(f"the docs extra is not installed (missing: {', '.join(MISSING)})")
    out = tmp_path_factory.mktemp("docs")
    res, wall = build(out)
    print(f"docs build: {wall:.1f} s")
    return out / "html", res, wall


def _fail_text(res) -> str:
    return f"exit {res.returncode}\n--- stderr ---\n{res.stderr[-6000:]}\n--- stdout ---\n{res.stdout[-2000:]}"


# ------------------------------------------------------------------------------------ builds
@requires_docs
def test_the_site_builds_with_warnings_as_errors(site):
    html, res, wall = site
    assert res.returncode == 0, _fail_text(res)
    pages = ["index", "claims", "catalogue", "contributing", "theory/index", "api/index",
             "api/generated/studies.claims", "auto_examples/index", "search", "genindex"]
    pages += [f"theory/{p.stem}" for p in (DOCS / "theory").glob("*.md") if p.stem != "index"]
    pages += [f"auto_examples/{p.stem}" for p in EXAMPLES]
    missing = [p for p in pages if not (html / f"{p}.html").is_file()]
    assert not missing, missing
    assert (html / "_static" / "mathjax" / "tex-chtml.js").is_file()
    assert list((html / "_static" / "mathjax" / "output" / "chtml" / "fonts" / "woff-v2").glob("*.woff"))
    for example in EXAMPLES:  # downloadable as a script and as a notebook
        assert list(html.rglob(f"_downloads/*/{example.stem}.ipynb")), f"no notebook for {example.name}"
        assert list(html.rglob(f"_downloads/*/{example.name}")), f"no script for {example.name}"
    for mod in ("theory", "sim", "studies", "paper_figs", "theory.token_sample.uniform", "gpu"):
        assert (html / "api" / "generated" / f"{mod}.html").is_file(), mod


class _Resources(HTMLParser):
    """Every URL a page makes the browser fetch (not the links a reader may follow)."""

    FETCHED = {("script", "src"), ("img", "src"), ("iframe", "src"), ("source", "src"), ("video", "src"),
               ("audio", "src"), ("embed", "src"), ("object", "data")}

    def __init__(self):
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for t, attr in self.FETCHED:
            if tag == t and a.get(attr):
                self.urls.append(a[attr])
        if tag == "link" and a.get("href") and set((a.get("rel") or "").split()) & {"stylesheet", "preload", "icon",
                                                                                      "modulepreload", "prefetch"}:
            self.urls.append(a["href"])


@requires_docs
def test_no_page_or_stylesheet_fetches_from_the_network(site):
    html, res, _ = site
    assert res.returncode == 0, _fail_text(res)
    remote = re.compile(r"^\s*(https?:)?//", re.I)
    bad = []
    for page in html.rglob("*.html"):
        parser = _Resources()
        parser.feed(page.read_text(encoding="utf-8"))
        bad += [f"{page.relative_to(html)}: {u}" for u in parser.urls if remote.match(u)]
    css_remote = re.compile(r"""(@import\s+(url\()?\s*['"]?|url\(\s*['"]?)(https?:)?//""", re.I)
    for css in html.rglob("*.css"):
        if css_remote.search(css.read_text(encoding="utf-8", errors="replace")):
            bad.append(f"{css.relative_to(html)}: a remote url() or @import")
    assert not bad, bad


@requires_docs
def test_the_catalogue_lists_every_study_and_every_declared_claim(site):
    html, res, _ = site
    assert res.returncode == 0, _fail_text(res)
    sys.path.insert(0, str(DOCS / "_ext"))
    try:
        from workbench_catalogue import claim_specs
    finally:
        sys.path.remove(str(DOCS / "_ext"))
    from studies.catalog import STUDIES

    page = (html / "catalogue.html").read_text(encoding="utf-8")
    n_claims = 0
    for entry in STUDIES:
        assert f'id="study-{entry.name.replace("_", "-")}"' in page, f"no section for {entry.name}"
        specs = claim_specs(entry.module, entry.name)
        assert specs, f"{entry.name}: no ClaimSpec constants found in {entry.module}"
        for spec in specs:
            assert f'id="claim-{spec.id.replace("_", "-").replace(".", "-").lower()}"' in page, spec.id
        n_claims += len(specs)
    assert page.count('<tr class="row-odd"') + page.count('<tr class="row-even"') >= n_claims
    # a cited section of a present theory note is a link to its anchor
    if (DOCS / "theory" / "token_sample.md").is_file():
        assert re.search(r'href="theory/token_sample\.html#token-sample-s\d', page)


@requires_docs
def test_a_study_module_that_fails_to_import_stops_the_build(tmp_path):
    """The catalogue is generated from the modules: one that cannot be imported fails the build
    with the study's name, its module and the error, not a page with a table missing."""
    src = tmp_path / "src"
    src.mkdir()
    (tmp_path / "broken_catalog.py").write_text(textwrap.dedent("""\
        from studies.catalog import Entry
        PAPERS = {"token_sample": "a paper"}
        STUDIES = (Entry("ghost", "no_such_study_module", "token_sample", "paper_figs.convergence"),)
        """))
    (src / "conf.py").write_text(textwrap.dedent(f"""\
        import sys
        sys.path[:0] = [{str(DOCS / '_ext')!r}, {str(ROOT)!r}, {str(tmp_path)!r}]
        extensions = ["workbench_catalogue"]
        """))
    (src / "index.rst").write_text("Catalogue\n=========\n\n.. study-catalogue::\n   :catalog: broken_catalog\n")
    res = subprocess.run([sys.executable, "-m", "sphinx", "-W", "-q", "-b", "html", str(src), str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert res.returncode != 0
    text = res.stderr + res.stdout
    assert "study 'ghost': cannot import its module 'no_such_study_module'" in text, text[-3000:]
    assert "ModuleNotFoundError" in text


@requires_docs
@pytest.mark.parametrize("setting, message", [
    ('mathjax_path = "https://cdn.example.org/mathjax/tex-chtml.js"', "is a URL"),
    ('extensions.append("sphinx.ext.intersphinx")', "intersphinx fetches"),
    ("del mathjax_path", "is a URL"),  # Sphinx's own default is a CDN: forgetting to set it fails too
])
def test_a_configuration_that_would_go_online_stops_the_build(tmp_path, setting, message):
    src = tmp_path / "src"
    src.mkdir()
    (src / "conf.py").write_text(textwrap.dedent(f"""\
        import sys
        sys.path[:0] = [{str(DOCS / '_ext')!r}, {str(ROOT)!r}]
        extensions = ["sphinx.ext.mathjax", "workbench_offline"]
        mathjax_path = "mathjax/tex-chtml.js"
        """) + setting + "\n")
    (src / "index.rst").write_text("Maths\n=====\n\n:math:`x^2`\n")
    res = subprocess.run([sys.executable, "-m", "sphinx", "-W", "-q", "-b", "html", str(src), str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert res.returncode != 0 and message in res.stderr + res.stdout, res.stderr[-2000:]


# ------------------------------------------------------------------------------------ examples
@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_runs_as_a_script(example, tmp_path, request):
    """Each example runs to the end and draws: in the gallery build when the docs extra is
    installed (the site's build runs every script afresh, and a script that raises stops that
    build), as a plain script within its time limit otherwise."""
    if not MISSING:
        html, res, _ = request.getfixturevalue("site")
        assert res.returncode == 0, _fail_text(res)
        page = (html / "auto_examples" / f"{example.stem}.html").read_text(encoding="utf-8")
        assert "sphx-glr-single-img" in page or "sphx-glr-multi-img" in page, f"{example.name} drew no figure"
        assert "Traceback (most recent call last)" not in page
        return
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, str(example)], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=EXAMPLE_TIMEOUT_S)
    wall = time.perf_counter() - t0
    assert res.returncode == 0, f"{example.name} exited {res.returncode}:\n{res.stderr[-4000:]}"
    assert wall < EXAMPLE_TIMEOUT_S
    assert not list(tmp_path.iterdir()) or all(p.suffix in (".png", ".zarr", ".csv") for p in tmp_path.iterdir())


def test_the_gallery_has_examples():
    assert EXAMPLES, "examples/ has no example"
    assert (ROOT / "examples" / "README.rst").is_file()
    assert all(p.name.startswith("plot_") for p in EXAMPLES), "sphinx-gallery runs examples/plot_*.py only"


# ------------------------------------------------------------------------------------ browser
@requires_docs
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_the_site_in_a_real_browser(site, tmp_path):
    """Offline (every request file: or data:), the search finds a function by name, the maths of
    every theory note is rendered by MathJax (no raw \\( or $$ left), every gallery image loads."""
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    html, res, _ = site
    assert res.returncode == 0, _fail_text(res)
    notes = sorted(p.stem for p in (DOCS / "theory").glob("*.md") if p.stem != "index")
    requests: list[str] = []
    shots = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--allow-file-access-from-files"])
        try:
            page = browser.new_page(viewport={"width": 1366, "height": 900})
            page.on("request", lambda r: requests.append(r.url))

            # search: the function's entry, linking to its API page
            page.goto((html / "search.html").as_uri() + "?q=z_family", wait_until="load", timeout=20_000)
            page.wait_for_selector("#search-results ul.search li a", timeout=20_000)
            hits = page.eval_on_selector_all("#search-results ul.search li a",
                                             "els => els.map(e => [e.textContent, e.getAttribute('href')])")
            assert any("z_family" in text and "studies.claims" in href for text, href in hits), hits
            page.locator("#search-results ul.search li a", has_text="z_family").first.click()
            page.wait_for_load_state("load")
            assert page.url.split("#")[0].endswith("api/generated/studies.claims.html"), page.url
            assert page.is_visible("dt#studies\\.claims\\.z_family") or page.locator("[id='studies.claims.z_family']").count()

            # maths: rendered on every theory note, no raw TeX delimiters left in the text
            raw = {}
            for note in notes:
                page.goto((html / "theory" / f"{note}.html").as_uri(), wait_until="load", timeout=20_000)
                page.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise",
                                       timeout=20_000)
                page.evaluate("() => MathJax.startup.promise")
                n_math = page.evaluate("() => document.querySelectorAll('mjx-container').length")
                text = page.evaluate("""() => { const b = document.querySelector('article') || document.body;
                    const c = b.cloneNode(true);
                    c.querySelectorAll('pre, code, script, style, mjx-container, .highlight').forEach(e => e.remove());
                    return c.textContent; }""")
                raw[note] = (n_math, [t for t in ("\\(", "\\)", "$$", "\\[", "\\begin{") if t in text])
                if note == notes[0]:
                    shots["theory"] = tmp_path / "theory.png"
                    page.screenshot(path=str(shots["theory"]))
            assert all(n > 0 for n, _ in raw.values()), raw
            assert not any(left for _, left in raw.values()), raw

            # gallery: every image of the index and of each example loads
            for rel in ["auto_examples/index.html", *(f"auto_examples/{e.stem}.html" for e in EXAMPLES)]:
                page.goto((html / rel).as_uri(), wait_until="load", timeout=20_000)
                page.evaluate("() => document.querySelectorAll('img').forEach(i => { i.loading = 'eager'; })")
                page.wait_for_function("() => Array.from(document.images).every(i => i.complete)", timeout=20_000)
                n = page.evaluate("() => document.images.length")
                broken = page.evaluate("() => Array.from(document.images).filter(i => !(i.naturalWidth > 0))"
                                       ".map(i => i.getAttribute('src'))")
                assert n >= 1 and not broken, (rel, n, broken)
            shots["example"] = tmp_path / "example.png"
            page.screenshot(path=str(shots["example"]), full_page=True)
        finally:
            browser.close()
    outside = [u for u in requests if not u.startswith(("file:", "data:"))]
    assert not outside, outside
    for shot in shots.values():
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    keep = os.environ.get("WORKBENCH_DOCS_SHOTS")
    if keep:  # to look at them: WORKBENCH_DOCS_SHOTS=folder pytest tests/docs
        Path(keep).mkdir(parents=True, exist_ok=True)
        for name, shot in shots.items():
            shutil.copy(shot, Path(keep) / f"{name}.png")
