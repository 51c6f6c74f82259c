"""Adding a study is its module, its figure module and one catalogue line: a throwaway study is
written here into a scratch folder (the error of a sample mean against n, with one claim),
registered with one catalogue line, and the whole contract (:mod:`studies.checks`) runs on it
-- the same checks as on every real study. Nothing else of the workbench is touched."""
import sys
import textwrap

import pytest

from studies import catalog
from studies.checks import Bench, checks_for

STUDY_MODULE = '''\
"""A throwaway study: the error of the mean of n standard normals falls like n^(-1/2)."""
import sys

import numpy as np
import xarray as xr

from studies.claims import ClaimSpec, z_family
from studies.cli import Part, UsageError, parse_n_grid, positive_int, run_params, study_main
from studies.fits import loglog_rate
from studies.sweep import Sweep

STUDY = "toy"
DESCRIPTION = "The error of a sample mean against the sample size n."
EXAMPLES = "examples:\\n  python -m toy_study --quick --plot\\n"
DEFAULTS = {"n": "2^4..2^10", "reps": 32}
QUICK = {"n": "2^4..2^8", "reps": 16}
PRESETS = {}
RATE = ClaimSpec("toy.rate", "the central limit theorem (notes token_sample §2.1)", "The error of the mean falls like n^(-1/2).")


def add_arguments(p):
    p.add_argument("--n", type=parse_n_grid, default=None, help="sample sizes")
    p.add_argument("--reps", type=positive_int, default=None, help="samples per n")


def validate(args):
    if len(args.n) < 3:
        raise UsageError("--n: a rate fit needs at least 3 sample sizes")


def _cell(cell):
    rng = np.random.default_rng(cell.seed)
    return {"err": abs(rng.standard_normal(int(cell.coords["n"])).mean())}


def parts(args):
    return [Part("", sweep=Sweep(study=STUDY, cell_dims={"n": np.asarray(args.n), "rep": np.arange(args.reps)},
                                 variables={"err": ("n", "rep")}, coords={},
                                 params={"n": list(args.n), "reps": args.reps}, run_cell=_cell,
                                 root_seed=args.seed))]


def analyze(ds):
    n = np.asarray(run_params(ds)["n"], dtype=float)
    fit = loglog_rate(n, ds["err"].values)
    z, src = z_family(1)
    out = xr.Dataset({"fit_slope": ((), fit.slope), "fit_slope_se": ((), fit.se)})
    return out, [RATE.equal(fit.slope, fit.se, -0.5, z=z, z_source=src, prediction_text="slope -0.5")]


def summary(an):
    return f"slope {float(an['fit_slope']):+.3f} ± {float(an['fit_slope_se']):.3f}"


def main(argv=None):
    return study_main(sys.modules[__name__], argv)
'''

FIGURE_MODULE = '''\
"""The throwaway study's figure: the error of the mean against n."""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from paper_figs._common import open_store, save_figure  # noqa: E402


def draw(store, out=None, dpi=100):
    ds = open_store(store, study="toy", needs="fit_slope")
    out = Path(out) if out is not None else Path(store).with_suffix(".png")
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.loglog(ds["n"].values, ds["err"].mean("rep").values, "o-",
              label=f"slope {float(ds['fit_slope']):+.2f}")
    ax.set_xlabel("n")
    ax.legend()
    return [save_figure(fig, out, dpi=dpi)]
'''

CATALOGUE_LINE = 'catalog.Entry("toy", "toy_study", "token_sample", "toy_fig", quick_s=1)'


@pytest.fixture
def toy(tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    (src / "toy_study.py").write_text(STUDY_MODULE)
    (src / "toy_fig.py").write_text(FIGURE_MODULE)
    monkeypatch.syspath_prepend(str(src))
    entry = eval(CATALOGUE_LINE)  # exactly the line a contributor adds to studies/catalog.py
    monkeypatch.setattr(catalog, "STUDIES", catalog.STUDIES + (entry,))
    yield entry
    for name in ("toy_study", "toy_fig"):
        sys.modules.pop(name, None)


def test_a_new_study_is_one_module_one_figure_and_one_catalogue_line(toy, tmp_path):
    names = [name for name, _ in checks_for(toy, gpu=False)]
    assert names == ["shape", "help", "usage_errors", "no_gpu", "quick_run", "reanalyze", "resume", "citations"]
    bench = Bench(tmp_path / "bench")
    for name, check in checks_for(toy, gpu=False):
        check(toy, bench)
    lines = {"study": STUDY_MODULE.count("\n"), "figure": FIGURE_MODULE.count("\n"), "catalogue": 1}
    print(f"a new study took: {lines}")
    assert lines["study"] < 80 and lines["figure"] < 40


def test_the_contract_catches_a_broken_study(toy, tmp_path, monkeypatch):
    """The checks can fail: an analysis that reads the command line instead of the store is
    caught by the re-analysis check, and a missing shape name by the shape check."""
    import toy_study

    bench = Bench(tmp_path / "bench")
    checks = dict(checks_for(toy, gpu=False))
    checks["quick_run"](toy, bench)
    calls = {"k": 0}
    real = toy_study.analyze

    def drifting(ds):  # a different answer on every call: what a command-line-bound analysis gives
        calls["k"] += 1
        an, claims = real(ds)
        return an, [c.__class__(**{**c.as_dict(), "measured": c.measured + calls["k"]}) for c in claims]

    monkeypatch.setattr(toy_study, "analyze", drifting)
    with pytest.raises(AssertionError, match="re-analysis differs"):
        checks["reanalyze"](toy, bench)
    monkeypatch.delattr(toy_study, "summary")
    with pytest.raises(AssertionError, match="summary"):
        checks["shape"](toy, bench)
    assert textwrap.dedent(CATALOGUE_LINE).startswith("catalog.Entry(")
