"""ICL inputs checked before anything is created: every float of ``python -m studies.icl SUB`` goes
through the same variance and score checks (:func:`studies.icl._common.check_variance`,
:func:`studies.cli.check_scores`, the ODE's exponent and resolution limits), so a value the run
cannot carry is one line on stderr, exit status 2, no traceback and nothing written -- instead
of a failure mid-run with a store left behind. One row a case; the second table holds values
that used to fail mid-run and must now run to the end."""
import hashlib
from pathlib import Path

import pytest

from studies import icl

DIGITS20 = "12345678901234567890"  # above int64: refused when parsed
VARIANCE = "outside the range the studies take"
EXP = "exp(d omega omega^T)"

# (sub-study, arguments, expected fragment of the one-line message)
REFUSED = [
    ("estimators", ["--mu", "1e308"], "--mu"),
    ("estimators", ["--mu", "-1e308"], "--mu"),
    ("estimators", ["--mu", "1e200"], VARIANCE),
    ("estimators", ["--sigma2", "1e308"], "--sigma2"),
    ("estimators", ["--sigma2", "1e7"], VARIANCE),
    ("estimators", ["--omega", "1e308"], "leave float64's range"),
    ("estimators", ["--L", DIGITS20], "too large"),
    ("estimators", ["--d", DIGITS20], "too large"),
    ("train", ["--sigma2", "1e308"], "--sigma2"),
    ("train", ["--sigma2", "1e7"], VARIANCE),
    ("train", ["--L", DIGITS20], "too large"),
    ("train", ["--d", DIGITS20], "too large"),
    ("noniso", ["--sigma2", "1e308"], "--sigma2"),
    ("noniso", ["--sigma2", "2e6"], VARIANCE),
    ("noniso", ["--L", DIGITS20], "too large"),
    ("multitask", ["--sigma2", "0.5"], "unrecognized arguments"),  # its tasks fix their own noise
    ("multitask", ["--L", DIGITS20], "too large"),
    ("ode", ["--sigma2", "1e308"], "--sigma2"),
    ("ode", ["--random-sigma2", "1e308"], "--random-sigma2"),
    ("ode", ["--random-sigma2", "1e7"], VARIANCE),
    ("ode", ["--d", DIGITS20], "too large"),
    ("ode", ["--d", "1000000000000000000"], EXP),  # 19 digits: parsed, but exp(d omega^2) overflows
    ("ode", ["--d", "100000"], EXP),
    ("ode", ["--d", "1500"], EXP),  # d x max omega_0^2 = 47 at the random start: the integrator never ends
    ("ode", ["--init", "0.3", "--d", "500"], EXP),
    ("ode", ["--init", "0.9"], "not on the plateau"),
    ("ode", ["--init", "0.5"], "not on the plateau"),
    ("ode", ["--L", DIGITS20], "too large"),
    ("ode", ["--L", "100000000000000000"], "--L"),  # 18 digits: A(omega) would be singular
    ("ode", ["--L", "1"], "at least 2"),
    ("ode", ["--init", "1e-12"], "--init"),
    ("ode", ["--init=-1e-9"], "below what float64 resolves"),
    ("ode", ["--t-max", "9.99"], ">= 10"),
]
# (sub-study, arguments): used to end in a traceback, now run to the end
RUNS = [
    ("ode", ["--t-max", "10"]),
    ("ode", ["--t-max", "15"]),
    ("ode", ["--t-max", "19.99"]),
    ("ode", ["--t-max", "20"]),
    ("ode", ["--quick", "--init", "2e-6"]),  # just above the resolution limit (1.6e-6 on the defaults)
]


def _snapshot(root: Path) -> dict:
    return {p.relative_to(root): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _run(argv):
    try:
        return icl.main(argv)
    except SystemExit as e:
        return e.code


def test_the_table_covers_every_float_class():
    subs = {s for s, *_ in REFUSED}
    assert subs == {"train", "estimators", "ode", "noniso", "multitask"}
    assert {a[0].split("=")[0] for _, a, _ in REFUSED} >= {"--mu", "--sigma2", "--random-sigma2", "--d", "--L",
                                                           "--init", "--t-max", "--omega"}


@pytest.mark.parametrize("sub,argv,msg", REFUSED, ids=[f"{s}:{' '.join(a)[:40]}" for s, a, _ in REFUSED])
def test_refused_in_one_line_before_anything_is_created(tmp_path, monkeypatch, capsys, sub, argv, msg):
    monkeypatch.chdir(tmp_path)  # anything written by mistake would land here
    (tmp_path / "marker.txt").write_text("untouched")
    before = _snapshot(tmp_path)
    rc = _run([sub, "--quick", "--no-progress", *argv, "--out", str(tmp_path / "x.zarr")])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert msg in err, err
    assert _snapshot(tmp_path) == before, "something was created or changed"


@pytest.mark.parametrize("sub,argv", [r if i in (0, 4) else pytest.param(*r, marks=pytest.mark.slow)
                                      for i, r in enumerate(RUNS)],
                         ids=[f"{s}:{' '.join(a)}" for s, a in RUNS])
def test_values_that_failed_mid_run_now_run(tmp_path, capsys, claims, sub, argv):
    out = tmp_path / "o.zarr"
    rc = _run([sub, "--no-progress", *argv, "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 0 and "Traceback" not in err, err
    got = claims.read(out)
    assert got and all(c.outcome in ("holds", "fails", "not tested") for c in got.values())
    assert all(c.outcome != "not tested" or c.reason for c in got.values())


@pytest.mark.slow  # two full --quick ODE runs; the positive start runs in every suite run
def test_a_negative_start_is_the_same_flow_with_the_heads_swapped(tmp_path, claims):
    """--init -a starts the pair at (-a, a): the same flow, so the same claims and outcomes."""
    got = {}
    for a in ("1e-3", "-1e-3"):
        out = tmp_path / f"o{a}.zarr"
        assert _run(["ode", "--quick", "--no-progress", f"--init={a}", "--out", str(out)]) == 0
        got[a] = claims.none_fail(out)
    assert {k: c.outcome for k, c in got["1e-3"].items()} == {k: c.outcome for k, c in got["-1e-3"].items()}
    assert got["-1e-3"]["icl_ode.drift_direction"].outcome == "holds"
