"""studies.claims: the family helpers added for grid-wide claims (worst_of, z_family with dof)."""
import pytest
from scipy import stats

from studies.claims import ClaimSpec, worst_of, z_family

SPEC = ClaimSpec("demo.rate", "a paper", "a statement")


def test_z_family_student_t_for_few_replicates():
    z, src = z_family(4)
    zt, srct = z_family(4, dof=5)
    assert z == pytest.approx(stats.norm.isf(0.01 / 8)) and zt == pytest.approx(stats.t.isf(0.01 / 8, 5))
    assert zt > z and "Student t with 5 dof" in srct and "4 tests" in src
    assert z_family(1, dof=10**6)[0] == pytest.approx(z_family(1)[0], rel=1e-4)


def test_worst_of_shows_the_failing_or_the_closest_member():
    z, src = z_family(3)
    members = [SPEC.equal(0.50, 0.01, 0.5, z=z, z_source=src, where="s=1"),
               SPEC.equal(0.52, 0.01, 0.5, z=z, z_source=src, where="s=2"),
               SPEC.not_tested("regime not reached", where="s=3")]
    c = worst_of(members, where="mean", every="scale")
    assert c.outcome == "holds" and c.where == "mean" and "shown: s=2" in c.prediction_text
    assert "(2 of 3;" in c.prediction_text
    members.append(SPEC.at_least(0.2, 0.01, 0.5, z=z, z_source=src, where="s=4"))
    c = worst_of(members, every="scale")
    assert c.outcome == "fails" and "shown: s=4" in c.prediction_text and c.key == "demo.rate"
    c = worst_of([SPEC.not_tested("a", where="x"), SPEC.not_tested("b", where="y")], where="cov")
    assert c.outcome == "not tested" and c.reason == "a; b" and c.key == "demo.rate[cov]"
    with pytest.raises(ValueError):
        worst_of([])
