"""studies.claims as a unit: the critical values, every kind of comparison at its edges, the
member worst_of shows, the store round trip and the one summary format."""
import math

import numpy as np
import pytest
from scipy import stats

from studies import claims as cl
from studies.claims import ClaimSpec, format_claims, from_dataset, slack, to_dataset, worst_of, z_family

SPEC = ClaimSpec("demo.claim", "a paper, Theorem 1", "a statement")
Z, SRC = z_family(1)


# ---------------------------------------------------------------------------- z_family
@pytest.mark.parametrize("m", [1, 2, 7, 100])
def test_z_family_is_the_bonferroni_normal_quantile(m):
    z, src = z_family(m)
    assert z == pytest.approx(stats.norm.isf(0.01 / (2 * m)))
    # m independent two-sided tests at z: family-wise false-alarm rate 1 - (1 - 2 P(Z > z))^m <= 1%
    assert 1 - (1 - 2 * stats.norm.sf(z)) ** m <= 0.01 + 1e-12
    assert f"{m} test" in src and "family-wise 1%" in src


@pytest.mark.parametrize("dof", [1, 2, 5, 30])
def test_z_family_uses_student_t_with_few_replicates(dof):
    z, src = z_family(3, dof=dof)
    assert z == pytest.approx(stats.t.isf(0.01 / 6, dof)) and z > z_family(3)[0]
    assert f"Student t with {dof} dof" in src


# ---------------------------------------------------------------------------- each kind at its edges
def test_equal_at_its_edges():
    tol = Z * 0.1 + 0.05
    assert SPEC.equal(0.5 + tol * (1 - 1e-9), 0.1, 0.5, z=Z, z_source=SRC, allowance=0.05,
                      allowance_source="declared").outcome == "holds"
    c = SPEC.equal(0.5 - tol * (1 + 1e-6), 0.1, 0.5, z=Z, z_source=SRC, allowance=0.05, allowance_source="declared")
    assert c.outcome == "fails" and c.kind == "equal" and "> " in c.reason
    assert SPEC.equal(math.nan, 0.1, 0.5, z=Z, z_source=SRC).outcome == "not tested"
    assert SPEC.equal(0.5, 0.1, math.inf, z=Z, z_source=SRC).outcome == "not tested"
    with pytest.raises(ValueError, match="standard error or a declared allowance"):
        SPEC.equal(0.5, math.nan, 0.5, z=Z, z_source=SRC)


def test_at_least_and_at_most_at_their_edges():
    tol = Z * 0.2
    assert SPEC.at_least(1.0 - tol * (1 - 1e-9), 0.2, 1.0, z=Z, z_source=SRC).outcome == "holds"
    c = SPEC.at_least(1.0 - tol * (1 + 1e-6), 0.2, 1.0, z=Z, z_source=SRC)
    assert c.outcome == "fails" and c.kind == "at least"
    assert SPEC.at_most(1.0 + tol * (1 - 1e-9), 0.2, 1.0, z=Z, z_source=SRC).outcome == "holds"
    c = SPEC.at_most(1.0 + tol * (1 + 1e-6), 0.2, 1.0, z=Z, z_source=SRC)
    assert c.outcome == "fails" and c.kind == "at most"
    assert SPEC.at_least(math.nan, 0.2, 1.0, z=Z, z_source=SRC).outcome == "not tested"


@pytest.mark.parametrize("below", [False, True])
def test_exceeds_holds_fails_or_cannot_tell(below):
    s = -1.0 if below else 1.0
    tol = Z * 0.1
    kw = dict(z=Z, z_source=SRC, below=below)
    assert SPEC.exceeds(s * tol * 1.01, 0.1, 0.0, **kw).outcome == "holds"
    c = SPEC.exceeds(-s * tol * 1.01, 0.1, 0.0, **kw)
    assert c.outcome == "fails" and c.kind == "exceeds"
    c = SPEC.exceeds(s * tol * 0.99, 0.1, 0.0, **kw)
    assert c.outcome == "not tested" and "cannot tell" in c.reason and c.kind == "not tested"


def test_forms_holds_fails_and_not_tested():
    x = np.linspace(1, 8, 8)
    se = np.full(8, 0.05)
    quad = 0.3 * x**2
    cands = {"R^2": lambda r: r**2, "R": lambda r: r}
    c = SPEC.forms(x, quad, se, cands, "R^2", z=Z, z_source=SRC)
    assert c.outcome == "holds" and c.kind == "form" and c.measured >= Z**2
    c = SPEC.forms(x, 0.3 * x, se, cands, "R^2", z=Z, z_source=SRC)
    assert c.outcome == "fails" and c.measured <= -Z**2
    c = SPEC.forms(x, quad, np.full(8, 1e3), cands, "R^2", z=Z, z_source=SRC)
    assert c.outcome == "not tested" and "indistinguishable" in c.reason
    assert SPEC.forms(x[:3], quad[:3], se[:3], cands, "R^2", z=Z, z_source=SRC).outcome == "not tested"
    assert SPEC.forms(x, quad, se, cands, None, z=Z, z_source=SRC).outcome == "not tested"


def test_a_consistency_claim_says_why_it_cannot_be_broken():
    with pytest.raises(ValueError, match="why"):
        ClaimSpec("a.b", "s", "t", role="consistency")
    assert ClaimSpec("a.c", "s", "t", role="consistency", why="x").why == "x"
    assert cl.declared_claims()["a.c"].role == "consistency"


# ---------------------------------------------------------------------------- the power rule
def test_a_tolerance_as_large_as_the_effect_is_not_tested():
    # the tolerance z*0.1 = 0.258 exceeds the effect 0.2 it must resolve: not tested, never holds
    c = SPEC.at_least(0.1, 0.1, 0.2, z=Z, z_source=SRC, effect=0.2)
    assert c.outcome == "not tested" and "too few samples to resolve" in c.reason
    c = SPEC.equal(0.5, 0.01, 0.5, z=Z, z_source=SRC, effect=0.5)
    assert c.outcome == "holds"  # 0.026 resolves an effect of 0.5
    c = SPEC.equal(0.5, 0.01, 0.5, z=Z, z_source=SRC, allowance=0.6, allowance_source="declared", effect=0.5)
    assert c.outcome == "not tested"  # a declared allowance wider than the effect


def test_few_degrees_of_freedom_are_not_tested(monkeypatch):
    monkeypatch.setattr(cl, "ENFORCE_DOF", True)
    for dof, outcome in ((1, "not tested"), (2, "not tested"), (3, "holds"), (30, "holds")):
        z, src = z_family(1, dof=dof)
        assert z.dof == dof
        c = SPEC.equal(0.5, 0.001, 0.5, z=z, z_source=src)
        assert c.outcome == outcome, (dof, c.reason)
        if outcome == "not tested":
            assert f"{dof} degree(s) of freedom" in c.reason
    z, src = z_family(1)
    assert z.dof is None and SPEC.equal(0.5, 0.001, 0.5, z=z, z_source=src).outcome == "holds"


def test_an_underpowered_clear_failure_still_fails(monkeypatch):
    # the power rule withholds only "holds": a gap far outside the Student-t tolerance (t_1 at
    # 0.5% is ~64, so 64 * 0.001 = 0.064) is a real disagreement at any degrees of freedom
    monkeypatch.setattr(cl, "ENFORCE_DOF", True)
    z, src = z_family(1, dof=1)
    assert SPEC.equal(0.5, 0.001, 0.0, z=z, z_source=src).outcome == "fails"
    assert SPEC.at_least(0.0, 0.001, 0.5, z=z, z_source=src).outcome == "fails"
    assert SPEC.at_most(0.5, 0.001, 0.0, z=z, z_source=src).outcome == "fails"
    assert SPEC.exceeds(0.0, 0.001, 0.5, z=z, z_source=src).outcome == "fails"
    assert SPEC.exceeds(1.0, 0.001, 0.5, z=z, z_source=src).outcome == "not tested"  # would hold: withheld
    # and a tolerance wider than the effect withholds "holds" but not a clear failure either
    assert SPEC.equal(0.5, 0.01, 0.0, z=Z, z_source=SRC, allowance=0.3, allowance_source="declared",
                      effect=0.2).outcome == "fails"


def test_claims_check_their_own_fields():
    with pytest.raises(ValueError, match="needs a reason"):
        cl.Claim("a.b", "s", "t", outcome="not tested")
    with pytest.raises(ValueError, match="source of its tolerance"):
        cl.Claim("a.b", "s", "t", outcome="holds")
    with pytest.raises(ValueError, match="kind"):
        cl.Claim("a.b", "s", "t", outcome="holds", tolerance_source="x", kind="approximately")
    with pytest.raises(ValueError, match="role"):
        cl.Claim("a.b", "s", "t", outcome="holds", tolerance_source="x", role="anecdote")
    assert ClaimSpec("a.b", "s", "t", role="consistency", why="an identity").decided(True, test="x", tolerance_source="y").role == \
        "consistency"


# ---------------------------------------------------------------------------- worst_of, for every kind
def _family(kind, values):
    """Members of one kind, in grid order, the closest to failing in the middle."""
    z, src = z_family(len(values))
    out = []
    for i, v in enumerate(values):
        w = f"s={i}"
        if kind == "equal":
            out.append(SPEC.equal(v, 0.1, 0.0, z=z, z_source=src, where=w))
        elif kind == "at least":
            out.append(SPEC.at_least(v, 0.1, 0.0, z=z, z_source=src, where=w))
        elif kind == "at most":
            out.append(SPEC.at_most(-v, 0.1, 0.0, z=z, z_source=src, where=w))
        elif kind == "exceeds":
            out.append(SPEC.exceeds(v, 0.1, 0.0, z=z, z_source=src, where=w))
    return out


@pytest.mark.parametrize("kind, values, shown", [
    ("equal", [0.0, 0.25, 0.1], "s=1"),          # |gap| largest is closest to failing
    ("at least", [2.0, 0.35, 1.0], "s=1"),       # smallest margin above the bound
    ("at most", [2.0, 0.35, 1.0], "s=1"),
    ("exceeds", [2.0, 0.4, 1.0], "s=1"),         # the interval nearest the bound (the old bug)
])
def test_worst_of_shows_the_member_closest_to_failing(kind, values, shown):
    members = _family(kind, values)
    assert all(m.outcome == "holds" for m in members), [m.outcome for m in members]
    c = worst_of(members, every="scale")
    assert f"shown: {shown}" in c.prediction_text, c.prediction_text
    assert slack(c) == min(slack(m) for m in members)


def test_worst_of_shows_the_member_farthest_past_its_tolerance():
    z, src = z_family(3)
    members = [SPEC.equal(0.0, 0.1, 0.0, z=z, z_source=src, where="a"),
               SPEC.equal(0.5, 0.1, 0.0, z=z, z_source=src, where="b"),
               SPEC.equal(2.0, 0.1, 0.0, z=z, z_source=src, where="c")]
    c = worst_of(members, every="point")
    assert c.outcome == "fails" and "shown: c" in c.prediction_text
    x = np.linspace(1, 8, 8)
    forms = [SPEC.forms(x, 0.3 * x**2, np.full(8, s), {"R^2": np.square, "R": lambda r: r}, "R^2", z=Z,
                        z_source=SRC, where=f"se={s}") for s in (0.05, 0.5)]
    assert worst_of(forms, every="se").where == "" and "shown: se=0.5" in worst_of(forms, every="se").prediction_text


def test_slack_follows_the_kind():
    c = SPEC.equal(0.1, 0.1, 0.0, z=Z, z_source=SRC)
    assert slack(c) == pytest.approx((c.tolerance - 0.1) / c.tolerance)
    c = SPEC.at_least(0.0, 0.1, 0.1, z=Z, z_source=SRC)
    assert slack(c) == pytest.approx((c.tolerance - 0.1) / c.tolerance)
    c = SPEC.exceeds(-1.0, 0.1, 0.0, z=Z, z_source=SRC)
    assert c.outcome == "fails" and slack(c) == pytest.approx(-(1.0 - c.tolerance) / c.tolerance)
    assert slack(SPEC.decided(True, test="exact", tolerance_source="exact")) == 1.0
    assert slack(SPEC.decided(False, test="exact", tolerance_source="exact")) == -1.0
    assert math.isnan(slack(SPEC.not_tested("no")))


def test_worst_of_untested_family_joins_the_reasons():
    c = worst_of([SPEC.not_tested("a", where="x"), SPEC.not_tested("b", where="y")], where="cov")
    assert c.outcome == "not tested" and c.reason == "a; b" and c.key == "demo.claim[cov]"
    with pytest.raises(ValueError):
        worst_of([])


# ---------------------------------------------------------------------------- storage and printing
def _sample():
    x = np.linspace(1, 8, 8)
    return [SPEC.equal(0.51, 0.01, 0.5, z=Z, z_source=SRC, where="R=1"),
            SPEC.at_least(3.0, 0.1, 2.5, z=Z, z_source=SRC, where="R=2"),
            SPEC.exceeds(-0.1, 0.01, -0.5, z=Z, z_source=SRC, where="R=8"),
            SPEC.forms(x, 0.3 * x**2, np.full(8, 0.05), {"R^2": np.square, "R": lambda r: r}, "R^2", z=Z,
                       z_source=SRC, where="growth"),
            ClaimSpec("demo.identity", "code", "an identity", role="consistency", why="exact by construction").decided(
                True, test="exact", tolerance_source="rounding 1e-12"),
            SPEC.not_tested("regime not reached", where="R=4")]


def test_store_round_trip_keeps_every_field(tmp_path):
    import xarray as xr

    claims = _sample()
    path = tmp_path / "c.zarr"
    to_dataset(claims).to_zarr(str(path), mode="w", consolidated=False)
    with xr.open_zarr(str(path), consolidated=False) as ds:
        back = from_dataset(ds.load())
    def same(a, b):
        return all((x == y) or (isinstance(x, float) and math.isnan(x) and math.isnan(y))
                   for x, y in zip(a.as_dict().values(), b.as_dict().values()))

    assert len(back) == len(claims) and all(same(a, b) for a, b in zip(back, claims))
    assert [c.kind for c in back] == ["equal", "at least", "exceeds", "form", "decided", "not tested"]
    assert [c.role for c in back][-2:] == ["consistency", "evidence"]


def test_a_store_written_before_kinds_were_data_reads_them_from_the_test(tmp_path):
    ds = to_dataset(_sample()).drop_vars(["claim_kind", "claim_role"])
    back = from_dataset(ds)
    assert [c.kind for c in back] == ["equal", "at least", "exceeds", "form", "decided", "not tested"]
    assert {c.role for c in back} == {"evidence"}


def test_duplicate_claims_are_refused():
    c = SPEC.equal(0.5, 0.1, 0.5, z=Z, z_source=SRC)
    with pytest.raises(ValueError, match="duplicate"):
        to_dataset([c, c])


def test_the_one_summary_format():
    text = format_claims(_sample())
    lines = text.splitlines()
    assert lines[0] == "claims: 5 hold, 0 fail, 1 not tested"
    assert len(lines) == 1 + len(_sample()) + 1 and lines[-1].startswith("  tolerances: ")
    assert lines[1].split()[0] == "holds" and "claim[R=1]" in lines[1] and "0.51 ± 0.01" in lines[1]
    assert "not tested: regime not reached" in lines[6]
    failing = SPEC.equal(0.9, 0.01, 0.5, z=Z, z_source=SRC)
    assert "FAILS" in format_claims([failing]) and "> " in format_claims([failing])
    assert format_claims([]) == "claims: 0 hold, 0 fail, 0 not tested"


def test_an_analysis_being_replaced_is_never_read_as_claims(tmp_path):
    """write_analysis flags the store while it replaces the analysis: an interrupted replacement
    is refused by read_claims (never a mix of old and new claims), and a finished one reads."""
    import xarray as xr
    import zarr

    from studies.store import WRITING, write_analysis

    path = tmp_path / "s.zarr"
    xr.Dataset({"raw": (("n",), np.arange(3.0))}).to_zarr(str(path), mode="w", consolidated=False)
    write_analysis(path, to_dataset(_sample()))
    assert len(cl.read_claims(path)) == len(_sample())
    assert WRITING not in zarr.open_group(str(path)).attrs
    assert np.array_equal(xr.open_zarr(str(path))["raw"].values, np.arange(3.0))  # no layout: raw kept
    zarr.open_group(str(path), mode="r+").attrs[WRITING] = "interrupted"
    with pytest.raises(ValueError, match="being replaced"):
        cl.read_claims(path)
    write_analysis(path, to_dataset(_sample()[:2]))
    assert len(cl.read_claims(path)) == 2
