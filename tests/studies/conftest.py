"""Shared checks of the studies' command lines."""
import pytest


def ci_subset(names, keep):
    """Parametrize over ``names``: those in ``keep`` run in every test run (CI included), the
    others carry the ``slow`` marker (``pytest -m slow``) -- the same check on more configurations."""
    missing = set(keep) - set(names)
    if missing:
        raise ValueError(f"ci_subset: {sorted(missing)} are not among the names")
    return [n if n in keep else pytest.param(n, marks=pytest.mark.slow) for n in names]


def exit_code(main, argv):
    """``main(argv)``'s return code, or the code argparse exits with."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


@pytest.fixture
def usage_error(tmp_path, capsys):
    """``usage_error(main, argv, msg)``: ``main(argv + --out X)`` exits 2 with one line on stderr
    that contains ``msg``, no traceback, and writes nothing at X."""
    def check(main, argv, msg=""):
        out = tmp_path / "bad.zarr"
        rc = exit_code(main, [*argv, "--out", str(out)])
        err = capsys.readouterr().err
        assert rc == 2, err
        assert len(err.strip().splitlines()) == 1 and err.endswith("\n"), err
        assert msg in err and "Traceback" not in err, err
        assert not out.exists()
        return err

    return check


class ClaimChecks:
    """Reading and checking the claims a study stored (``claims`` fixture)."""

    @staticmethod
    def read(store) -> dict:
        """``{claim key: Claim}`` of every claim in the store (root and groups)."""
        from studies.claims import read_claims

        return {c.key: c for c in read_claims(store)}

    @classmethod
    def _as_dict(cls, store_or_claims) -> dict:
        if isinstance(store_or_claims, dict):
            return store_or_claims
        if isinstance(store_or_claims, (list, tuple)):
            return {c.key: c for c in store_or_claims}
        return cls.read(store_or_claims)

    @classmethod
    def failing(cls, store_or_claims) -> dict:
        return {k: c for k, c in cls._as_dict(store_or_claims).items() if c.outcome == "fails"}

    @classmethod
    def none_fail(cls, store_or_claims) -> dict:
        """Assert that no claim fails, that every untested claim says why and every tested one
        where its tolerance comes from; return the claims."""
        claims = cls._as_dict(store_or_claims)
        assert claims, "the study stored no claims"
        bad = {k: f"{c.reason} (measured {c.measured}, predicted {c.prediction_text or c.prediction})"
               for k, c in cls.failing(claims).items()}
        assert not bad, bad
        for k, c in claims.items():
            assert c.outcome in ("holds", "fails", "not tested"), k
            assert c.outcome != "not tested" or c.reason, k
            assert c.outcome == "not tested" or c.tolerance_source, k
            assert c.prediction_text or c.prediction == c.prediction, k  # a prediction, in words or a value
        return claims

    @classmethod
    def some_fail(cls, store_or_claims, *ids) -> dict:
        """Assert that at least one claim fails (one of ``ids`` when given, matched on the claim
        name without its ``[where]`` part); return the failing claims."""
        bad = cls.failing(store_or_claims)
        assert bad, "no claim failed"
        if ids:
            hit = {k: c for k, c in bad.items() if c.id in ids or c.name in ids}
            assert hit, f"none of {ids} failed; failing: {sorted(bad)}"
            return hit
        return bad

    @classmethod
    def outcome(cls, store_or_claims, key) -> str:
        return cls._as_dict(store_or_claims)[key].outcome


@pytest.fixture
def claims():
    return ClaimChecks
