"""Claims: what a study's verdicts are, in one home.

A **claim** sets a prediction, computed by ``theory/`` for *this run's* parameters, against a
measurement with its standard error, and says whether the prediction holds:

==================  ==========================================================================
field               meaning
==================  ==========================================================================
``id``              ``"<study>.<name>"``, e.g. ``convergence.clt_rate``
``where``           the point of the grid it is about (``"R=1"``), or ``""`` for the whole run
``source``          the paper and result it tests (and the section of the theory notes that derives it)
``statement``       one sentence in words
``prediction``      the predicted value (NaN for a form), with ``prediction_text`` in words
``measured``        the measured value, ``se`` its standard error, ``lo``/``hi`` its interval
``test``            how the two are compared, in words
``tolerance``       the allowed gap, and ``tolerance_source``: where it comes from
``outcome``         ``holds``, ``fails`` or ``not tested``
``reason``          why it was not tested, or what failed
``kind``            the comparison, as data: ``equal``, ``at least``, ``at most``, ``exceeds``,
                    ``form``, ``decided`` (a comparison the study made itself, e.g. an exact
                    sign condition) or ``not tested``; how close a claim is to failing
                    (:func:`slack`) follows from it
``role``            ``evidence`` (a simulation or a trained model against a theory prediction)
                    or ``consistency`` (the theory or the code against itself, an identity)
==================  ==========================================================================

Rules (``shared/ARCHITECTURE.md``, "Claims"):

* a claim the run cannot test is ``not tested`` with the reason (regime not reached on the grid,
  too few points, run too short) -- never ``holds``, never ``fails``;
* tolerances come from statistics (``z`` standard errors, with ``z`` from a family-wise error
  rate over the claim's tests: :func:`z_family`), from a *declared* asymptotic or model error
  (said so, with its source), or from a declared threshold (said so);
* a functional-form test compares the candidate forms against each other
  (:meth:`ClaimSpec.forms`), the predicted form being the one that fits ``theory/``'s own curve
  for the run's parameters (:func:`predicted_form`), never one R^2 against a cut.

A study declares its claims once as :class:`ClaimSpec` constants and evaluates them in its
analysis with the spec's tests (:meth:`~ClaimSpec.equal`, :meth:`~ClaimSpec.at_least`,
:meth:`~ClaimSpec.at_most`, :meth:`~ClaimSpec.exceeds`, :meth:`~ClaimSpec.forms`, :meth:`~ClaimSpec.not_tested`). The
study plumbing (:func:`studies.cli.run_study`) stores them in the dataset
(:func:`to_dataset`: one ``claim`` dimension, ``claim_*`` variables readable with xarray) and
prints them in one format (:func:`format_claims`).

Example::

    RATE = ClaimSpec("convergence.clt_rate", "Bohbot et al. 2025, Result 1", "E sup ~ C(R)/sqrt(n)")
    z, zsrc = z_family(n_tests)
    c = RATE.equal(slope, slope_se, -0.5, z=z, z_source=zsrc, allowance=0.05,
                   allowance_source="declared pre-asymptotic allowance (notes token_sample §6.2)", where="R=1")
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    "HOLDS",
    "FAILS",
    "NOT_TESTED",
    "OUTCOMES",
    "KINDS",
    "ROLES",
    "EVIDENCE",
    "CONSISTENCY",
    "slack",
    "Claim",
    "ClaimSpec",
    "z_family",
    "declared_claims",
    "Quantile",
    "MIN_DOF",
    "predicted_form",
    "fit_forms",
    "worst_of",
    "to_dataset",
    "from_dataset",
    "read_claims",
    "format_claims",
    "counts",
    "CLAIM_DIM",
]

HOLDS = "holds"
FAILS = "fails"
NOT_TESTED = "not tested"
OUTCOMES = (HOLDS, FAILS, NOT_TESTED)
EQUAL, AT_LEAST, AT_MOST, EXCEEDS, FORM, DECIDED = "equal", "at least", "at most", "exceeds", "form", "decided"
KINDS = (EQUAL, AT_LEAST, AT_MOST, EXCEEDS, FORM, DECIDED, NOT_TESTED)
EVIDENCE, CONSISTENCY = "evidence", "consistency"
ROLES = (EVIDENCE, CONSISTENCY)
CLAIM_DIM = "claim"
FAMILY_ALPHA = 0.01  # family-wise two-sided false-alarm rate of a claim's statistical tests


MIN_DOF = 3  # standard errors from fewer degrees of freedom than this cannot decide a claim
ENFORCE_DOF = True  # the degrees-of-freedom half of the power rule (False only to compare verdicts without it)


class Quantile(float):
    """A critical value (a float) that remembers the degrees of freedom of the standard errors
    it is meant for (``None``: normal, many degrees), so a claim made with it can apply the
    power rule (:data:`MIN_DOF`)."""

    dof: int | None = None

    def __new__(cls, value: float, dof: int | None = None):
        out = super().__new__(cls, value)
        out.dof = dof
        return out


def z_family(m: int = 1, alpha: float = FAMILY_ALPHA, dof: int | None = None) -> tuple[float, str]:
    """``(z, source)``: the two-sided normal quantile that keeps the family-wise false-alarm
    rate of ``m`` independent tests at ``alpha`` (Bonferroni), and a sentence saying so. With
    ``dof`` (standard errors estimated from ``dof + 1`` replicates) it is the Student-t quantile
    with ``dof`` degrees of freedom, which keeps the rate at ``alpha`` when replicates are few.
    ``z`` is a :class:`Quantile`: a claim tested with standard errors of fewer than
    :data:`MIN_DOF` degrees of freedom is not tested (the power rule)."""
    from scipy import stats

    m = max(1, int(m))
    tests = f"{m} test{'s' if m > 1 else ''}"
    if dof is not None:
        k = max(1, int(dof))
        z = float(stats.t.isf(alpha / (2 * m), k))
        return Quantile(z, k), f"z = {z:.2f} (family-wise {alpha:.0%}, {tests}, Student t with {k} dof)"
    z = float(stats.norm.isf(alpha / (2 * m)))
    return Quantile(z), f"z = {z:.2f} (family-wise {alpha:.0%}, {tests})"


_DECLARED: dict[str, "ClaimSpec"] = {}


def declared_claims(modules: Iterable[str] = ()) -> dict[str, "ClaimSpec"]:
    """Every :class:`ClaimSpec` made so far, by id, after importing ``modules`` and, for a
    package, all of its submodules (where studies declare their claims)."""
    import importlib
    import pkgutil

    for name in modules:
        mod = importlib.import_module(name)
        for info in pkgutil.walk_packages(getattr(mod, "__path__", []), f"{name}."):
            if not info.name.endswith("__main__"):
                importlib.import_module(info.name)
    return dict(_DECLARED)


def _f(x) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return math.nan
    return v


@dataclass(frozen=True)
class Claim:
    id: str
    source: str
    statement: str
    outcome: str = NOT_TESTED
    where: str = ""
    prediction: float = math.nan
    prediction_text: str = ""
    measured: float = math.nan
    se: float = math.nan
    lo: float = math.nan
    hi: float = math.nan
    test: str = ""
    tolerance: float = math.nan
    tolerance_source: str = ""
    reason: str = ""
    kind: str = ""
    role: str = EVIDENCE

    def __post_init__(self):
        if self.outcome not in OUTCOMES:
            raise ValueError(f"claim {self.id}: outcome must be one of {OUTCOMES}, got {self.outcome!r}")
        if not self.kind:
            object.__setattr__(self, "kind", NOT_TESTED if self.outcome == NOT_TESTED else DECIDED)
        if self.kind not in KINDS:
            raise ValueError(f"claim {self.id}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.role not in ROLES:
            raise ValueError(f"claim {self.id}: role must be one of {ROLES}, got {self.role!r}")
        if self.outcome == NOT_TESTED and not self.reason:
            raise ValueError(f"claim {self.id}: 'not tested' needs a reason")
        if self.outcome != NOT_TESTED and not self.tolerance_source:
            raise ValueError(f"claim {self.id}: a tested claim needs the source of its tolerance")

    @property
    def key(self) -> str:
        return f"{self.id}[{self.where}]" if self.where else self.id

    @property
    def name(self) -> str:
        """The id without the study prefix."""
        return self.id.split(".", 1)[-1]

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ClaimSpec:
    """What a claim is about (id, source, statement, role), declared once per study module; its
    methods evaluate it on one measurement and return a :class:`Claim`.

    ``role`` is ``evidence`` (a simulation or a trained model against a theory prediction) unless
    the claim checks the theory or the code against itself: then it is ``consistency`` and
    ``why`` says why no broken ingredient outside the checked code can make it fail (an exact
    identity, the theory against its own closed form). Every evidence claim has a negative
    control in the tests (``@pytest.mark.breaks("<id>")``: a test that breaks one ingredient and
    sees the claim fail). Each spec is registered when it is made (:func:`declared_claims`)."""

    id: str
    source: str
    statement: str
    role: str = EVIDENCE
    why: str = ""

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"claim {self.id}: role must be one of {ROLES}, got {self.role!r}")
        if self.role == CONSISTENCY and not self.why:
            raise ValueError(f"claim {self.id}: a consistency claim says why it cannot be broken from outside")
        _DECLARED[self.id] = self

    def _claim(self, **kw) -> Claim:
        return Claim(id=self.id, source=self.source, statement=self.statement, role=self.role, **kw)

    # ------------------------------------------------------------------------------ outcomes
    def not_tested(self, reason: str, *, where: str = "", prediction=math.nan, prediction_text: str = "",
                   measured=math.nan, se=math.nan) -> Claim:
        return self._claim(outcome=NOT_TESTED, kind=NOT_TESTED, reason=reason, where=where,
                           prediction=_f(prediction), prediction_text=prediction_text, measured=_f(measured),
                           se=_f(se))

    def decided(self, holds: bool, *, test: str, tolerance=math.nan, tolerance_source: str, where: str = "",
                prediction=math.nan, prediction_text: str = "", measured=math.nan, se=math.nan,
                lo=math.nan, hi=math.nan, reason: str = "", kind: str = DECIDED) -> Claim:
        """A claim whose comparison the caller made (``holds`` true or false); ``kind`` says
        which comparison it was (``decided`` when it is none of the standard ones)."""
        return self._claim(outcome=HOLDS if bool(holds) else FAILS, kind=kind, test=test, tolerance=_f(tolerance),
                           tolerance_source=tolerance_source, where=where, prediction=_f(prediction),
                           prediction_text=prediction_text, measured=_f(measured), se=_f(se), lo=_f(lo),
                           hi=_f(hi), reason=reason)

    def _unmeasured(self, measured, se, where, prediction, prediction_text):
        if not np.isfinite(_f(measured)):
            return self.not_tested("the measurement is not available (no finite value)", where=where,
                                   prediction=prediction, prediction_text=prediction_text)
        if not np.isfinite(_f(prediction)):
            return self.not_tested("the theory gives no value for this configuration", where=where,
                                   prediction_text=prediction_text, measured=measured, se=se)
        return None

    def _powered(self, result: Claim, tol, z, effect, where, prediction, prediction_text, measured, se) -> Claim:
        """The power rule, applied to every statistical claim: a claim whose tolerance is as
        large as the ``effect`` it tests (the distance between the prediction and the
        alternative it rules out), or whose standard errors come from fewer than
        :data:`MIN_DOF` degrees of freedom (``z.dof``), could not have failed for a plausible
        error, so its "holds" is not evidence: it is reported not tested. A failure stands --
        the critical value already accounts for the degrees of freedom (Student t), so a
        measurement outside even that wide tolerance is a real disagreement."""
        if result.outcome != HOLDS:
            return result
        dof = getattr(z, "dof", None)
        if ENFORCE_DOF and dof is not None and dof < MIN_DOF and np.isfinite(_f(se)) and _f(se) > 0:
            return self.not_tested(f"too few samples to resolve it: its standard error has {dof} degree(s) of "
                                   f"freedom, fewer than {MIN_DOF}", where=where,
                                   prediction=prediction, prediction_text=prediction_text, measured=measured, se=se)
        if effect is not None and np.isfinite(_f(effect)) and tol >= abs(_f(effect)):
            return self.not_tested(f"too few samples to resolve the effect: the tolerance {tol:.3g} is as large as "
                                   f"the effect it tests ({abs(_f(effect)):.3g})", where=where, prediction=prediction,
                                   prediction_text=prediction_text, measured=measured, se=se)
        return result

    @staticmethod
    def _tolerance(se, z, z_source, allowance, allowance_source):
        se = _f(se)
        parts = []
        tol = 0.0
        if np.isfinite(se) and se > 0 and z > 0:
            tol += z * se
            parts.append(f"{z_source} × SE {se:.3g}")
        if allowance:
            tol += float(allowance)
            parts.append(f"+ {float(allowance):.3g}: {allowance_source}")
        if not parts:
            raise ValueError("a test needs a standard error or a declared allowance")
        return tol, "; ".join(parts)

    def equal(self, measured, se, predicted, *, z: float, z_source: str, allowance: float = 0.0,
              allowance_source: str = "", where: str = "", prediction_text: str = "",
              effect: float | None = None) -> Claim:
        """Two-sided: ``|measured - predicted| <= z SE + allowance``. ``effect``: the size of the
        deviation the claim must be able to detect (power rule, :meth:`_powered`)."""
        miss = self._unmeasured(measured, se, where, predicted, prediction_text)
        if miss is not None:
            return miss
        tol, src = self._tolerance(se, z, z_source, allowance, allowance_source)
        gap = abs(_f(measured) - _f(predicted))
        result = self.decided(gap <= tol, kind=EQUAL, test="|measured - predicted| <= tolerance", tolerance=tol,
                            tolerance_source=src, where=where, prediction=predicted,
                            prediction_text=prediction_text or f"{_f(predicted):.4g}", measured=measured, se=se,
                            lo=_f(measured) - tol, hi=_f(measured) + tol,
                            reason="" if gap <= tol else f"|{_f(measured):.4g} - {_f(predicted):.4g}| = {gap:.3g} "
                                                         f"> {tol:.3g}")
        return self._powered(result, tol, z, effect, where, predicted, prediction_text, measured, se)

    def at_least(self, measured, se, bound, *, z: float, z_source: str, allowance: float = 0.0,
                 allowance_source: str = "", where: str = "", prediction_text: str = "",
                 effect: float | None = None) -> Claim:
        """One-sided: the prediction is ``measured >= bound``; fails only when
        ``measured + z SE + allowance < bound``."""
        miss = self._unmeasured(measured, se, where, bound, prediction_text)
        if miss is not None:
            return miss
        tol, src = self._tolerance(se, z, z_source, allowance, allowance_source)
        ok = _f(measured) + tol >= _f(bound)
        result = self.decided(ok, kind=AT_LEAST, test="measured >= predicted bound - tolerance", tolerance=tol,
                            tolerance_source=src,
                            where=where, prediction=bound, prediction_text=prediction_text or f">= {_f(bound):.4g}",
                            measured=measured, se=se, lo=_f(measured) - tol, hi=_f(measured) + tol,
                            reason="" if ok else f"{_f(measured):.4g} + {tol:.3g} < {_f(bound):.4g}")
        return self._powered(result, tol, z, effect, where, bound, prediction_text, measured, se)

    def at_most(self, measured, se, bound, *, z: float, z_source: str, allowance: float = 0.0,
                allowance_source: str = "", where: str = "", prediction_text: str = "",
                effect: float | None = None) -> Claim:
        """One-sided: the prediction is ``measured <= bound``; fails only when
        ``measured - z SE - allowance > bound``."""
        miss = self._unmeasured(measured, se, where, bound, prediction_text)
        if miss is not None:
            return miss
        tol, src = self._tolerance(se, z, z_source, allowance, allowance_source)
        ok = _f(measured) - tol <= _f(bound)
        result = self.decided(ok, kind=AT_MOST, test="measured <= predicted bound + tolerance", tolerance=tol,
                            tolerance_source=src,
                            where=where, prediction=bound, prediction_text=prediction_text or f"<= {_f(bound):.4g}",
                            measured=measured, se=se, lo=_f(measured) - tol, hi=_f(measured) + tol,
                            reason="" if ok else f"{_f(measured):.4g} - {tol:.3g} > {_f(bound):.4g}")
        return self._powered(result, tol, z, effect, where, bound, prediction_text, measured, se)

    def exceeds(self, measured, se, bound, *, z: float, z_source: str, where: str = "",
                prediction_text: str = "", below: bool = False) -> Claim:
        """Strict one-sided: the prediction is ``measured > bound`` (``measured < bound`` with
        ``below``). Holds when the interval ``measured ± z SE`` lies wholly on the predicted
        side, fails when it lies wholly on the other side, and is not tested when it contains
        the bound (the data cannot tell)."""
        miss = self._unmeasured(measured, se, where, bound, prediction_text)
        if miss is not None:
            return miss
        tol, src = self._tolerance(se, z, z_source, 0.0, "")
        m, b = _f(measured), _f(bound)
        sign = -1.0 if below else 1.0
        rel = "<" if below else ">"
        text = prediction_text or f"{rel} {b:.4g}"
        if sign * (m - b) > tol:
            held = self.decided(True, kind=EXCEEDS, test=f"measured {rel} bound by more than the tolerance",
                                tolerance=tol,
                                tolerance_source=src, where=where, prediction=b, prediction_text=text, measured=m,
                                se=se, lo=m - tol, hi=m + tol)
            return self._powered(held, tol, z, None, where, b, text, m, se)
        if sign * (b - m) > tol:
            return self.decided(False, kind=EXCEEDS, test=f"measured {rel} bound by more than the tolerance",
                                tolerance=tol,
                                tolerance_source=src, where=where, prediction=b, prediction_text=text, measured=m,
                                se=se, lo=m - tol, hi=m + tol,
                                reason=f"{m:.4g} is on the wrong side of {b:.4g} by more than {tol:.3g}")
        return self.not_tested(f"the interval [{m - tol:.4g}, {m + tol:.4g}] ({src}) contains {b:.4g}: "
                               "the data cannot tell", where=where, prediction=b, prediction_text=text,
                               measured=m, se=se)

    def forms(self, x, y, se, candidates: Mapping[str, Callable], predicted: str | None, *, z: float,
              z_source: str, where: str = "", min_points: int = 4, what: str = "y") -> Claim:
        """Functional form: fit ``y = a + b f(x)`` by weighted least squares for every candidate
        ``f`` and compare their chi^2. The claim holds when the ``predicted`` form fits best and
        beats every other by ``Delta chi^2 >= z^2`` (chi^2 scaled by the best fit's reduced
        chi^2 when that exceeds 1); it fails when another form beats it by that margin; it is
        not tested when the forms are indistinguishable on the grid, when there are fewer than
        ``min_points`` points, or when ``predicted`` is None (the theory's own curve does not
        single out a form on this grid; see :func:`predicted_form`)."""
        x = np.asarray(x, dtype=float)
        y = np.asarray(y, dtype=float)
        names = list(candidates)
        ptxt = f"{what} linear in {predicted}" if predicted else "no form singled out"
        if predicted is None:
            return self.not_tested(f"the theory's own curve does not single out one of {', '.join(names)} "
                                   "on this grid", where=where, prediction_text=ptxt)
        if x.size < min_points:
            return self.not_tested(f"{x.size} points; comparing {len(names)} two-parameter forms needs "
                                   f">= {min_points}", where=where, prediction_text=ptxt)
        if not (np.all(np.isfinite(y)) and np.all(np.isfinite(se)) and np.all(np.asarray(se) > 0)):
            return self.not_tested("non-finite measurements or standard errors", where=where, prediction_text=ptxt)
        chi2 = fit_forms(x, y, se, candidates)
        dof = x.size - 2
        best = min(chi2, key=chi2.get)
        scale = max(1.0, chi2[best] / dof)
        margin = z * z
        delta = {k: (v - chi2[predicted]) / scale for k, v in chi2.items() if k != predicted}
        runner = min(delta, key=delta.get)
        measured = delta[runner]  # > 0: the predicted form fits better than the best alternative
        test = (f"Delta chi^2 (scaled by the best reduced chi^2 {scale:.3g}) between the predicted form and "
                f"the best other form ({runner}) >= z^2")
        src = f"{z_source}; threshold z^2 = {margin:.3g}"
        text = ", ".join(f"{k}: {v:.3g}" for k, v in chi2.items())
        if measured >= margin:
            return self.decided(True, kind=FORM, test=test, tolerance=margin, tolerance_source=src, where=where,
                                prediction_text=ptxt, measured=measured, reason=f"chi^2 {text}")
        if -measured >= margin:
            return self.decided(False, kind=FORM, test=test, tolerance=margin, tolerance_source=src, where=where,
                                prediction_text=ptxt, measured=measured,
                                reason=f"{best} fits better than {predicted}: chi^2 {text}")
        return self.not_tested(f"the forms are indistinguishable on this grid (|Delta chi^2| = {abs(measured):.3g} "
                               f"< {margin:.3g}; chi^2 {text})", where=where, prediction_text=ptxt,
                               measured=measured)


def slack(c: Claim) -> float:
    """How far a tested claim is from failing, in units of its tolerance: positive when it
    holds (the larger, the safer), negative when it fails (the more negative, the farther past
    its tolerance). It follows from the claim's ``kind``:

    ==============  =====================================================================
    ``equal``       ``(tol - |measured - predicted|) / tol``
    ``at least``    ``(measured + tol - bound) / tol``
    ``at most``     ``(bound + tol - measured) / tol``
    ``exceeds``     ``(|measured - bound| - tol) / tol``, with the sign of the outcome (the
                    measured interval lies wholly on one side of the bound)
    ``form``        ``(|Delta chi^2| - z^2) / z^2``, with the sign of the outcome
    ``decided``     +1 when it holds, -1 when it fails (no scale to compare on)
    ==============  =====================================================================

    A claim that was not tested has no slack (NaN)."""
    if c.outcome == NOT_TESTED:
        return math.nan
    sign = 1.0 if c.outcome == HOLDS else -1.0
    tol = c.tolerance if (np.isfinite(c.tolerance) and c.tolerance > 0) else math.nan
    m, p = c.measured, c.prediction
    if c.kind == EQUAL:
        val = (c.tolerance - abs(m - p)) / tol
    elif c.kind == AT_LEAST:
        val = (m + c.tolerance - p) / tol
    elif c.kind == AT_MOST:
        val = (p + c.tolerance - m) / tol
    elif c.kind == EXCEEDS:
        val = sign * (abs(m - p) - c.tolerance) / tol
    elif c.kind == FORM:
        val = sign * (abs(m) - c.tolerance) / tol
    else:
        val = math.nan
    return float(val) if np.isfinite(val) else sign


def worst_of(claims: Sequence[Claim], *, where: str = "", every: str = "") -> Claim:
    """One claim for a family of tests of one statement at several points of a grid (each
    member made with the family's Bonferroni ``z``, see :func:`z_family`): the member farthest
    past its tolerance when any fails, else the tested member closest to failing; ``not
    tested`` (with the members' reasons) when none was tested. The result carries ``where``
    and a prediction text that names the point shown, e.g. ``"... at every scale tested (3 of 4;
    shown: s=2)"``."""
    claims = list(claims)
    if not claims:
        raise ValueError("worst_of needs at least one claim")
    tested = [c for c in claims if c.outcome != NOT_TESTED]
    if not tested:
        reasons = sorted({c.reason for c in claims})
        return replace(claims[0], where=where, reason="; ".join(reasons))
    shown = min(tested, key=slack)
    suffix = f" at every {every} tested ({len(tested)} of {len(claims)}; shown: {shown.where})" if every else ""
    return replace(shown, where=where, prediction_text=(shown.prediction_text or _num(shown.prediction)) + suffix)


def fit_forms(x, y, se, candidates: Mapping[str, Callable]) -> dict[str, float]:
    """chi^2 of the WLS fit ``y = a + b f(x)`` for each candidate ``f``."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    w = 1.0 / np.asarray(se, dtype=float) ** 2 * np.ones_like(y)
    out = {}
    for name, f in candidates.items():
        X = np.stack([np.ones_like(x), np.asarray(f(x), dtype=float)], axis=1)
        sw = np.sqrt(w)
        coef, *_ = np.linalg.lstsq(X * sw[:, None], y * sw, rcond=None)
        out[name] = float(np.sum(w * (y - X @ coef) ** 2))
    return out


def predicted_form(x, y_theory, candidates: Mapping[str, Callable], *, clarity: float = 0.25) -> str | None:
    """The candidate form that fits ``theory/``'s own curve ``y_theory(x)`` for this run's
    parameters (unweighted least squares), or None when no form is clearly best: the best
    residual sum of squares must be at most ``clarity`` times the second best."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y_theory, dtype=float)
    if x.size < 3 or not np.all(np.isfinite(y)):
        return None
    rss = fit_forms(x, y, np.ones_like(y), candidates)
    order = sorted(rss, key=rss.get)
    if len(order) == 1:
        return order[0]
    scale = max(np.ptp(y) ** 2 * x.size, 1e-300)
    if rss[order[1]] / scale < 1e-6:  # every form reproduces the curve: nothing to tell apart
        return None
    return order[0] if rss[order[0]] <= clarity * rss[order[1]] else None


# ------------------------------------------------------------------------------ storage
_STR_FIELDS = [f.name for f in fields(Claim) if f.type in ("str", str)]
_NUM_FIELDS = [f.name for f in fields(Claim) if f.type in ("float", float)]


def to_dataset(claims: Sequence[Claim]):
    """The claims as an xarray Dataset over one ``claim`` dimension (coordinate: ``id[where]``),
    one ``claim_<field>`` variable per field (strings as variable-length UTF-8)."""
    import xarray as xr

    claims = list(claims)
    keys = [c.key for c in claims]
    if len(set(keys)) != len(keys):
        dup = sorted({k for k in keys if keys.count(k) > 1})
        raise ValueError(f"duplicate claims: {dup}")
    coord = np.array(keys, dtype=object)
    ds = xr.Dataset(coords={CLAIM_DIM: coord})
    for name in _STR_FIELDS:
        ds[f"claim_{name}"] = ((CLAIM_DIM,), np.array([getattr(c, name) for c in claims], dtype=object))
    for name in _NUM_FIELDS:
        ds[f"claim_{name}"] = ((CLAIM_DIM,), np.array([getattr(c, name) for c in claims], dtype=float))
    ds["claim_outcome"].attrs["flag_meanings"] = " | ".join(OUTCOMES)
    ds.attrs["claims_summary"] = summary_line(claims)
    return ds


def read_claims(store) -> list[Claim]:
    """Every claim stored in a study's store: the root's and, for a study of several parts,
    each group's (listed in the root's ``groups`` attribute)."""
    import xarray as xr
    import zarr

    grp = zarr.open_group(str(store), mode="r")
    out = []
    for name in [None, *grp.attrs.get("groups", [])]:
        if name is not None and name not in grp.group_keys():
            continue
        node = grp[name] if name else grp
        if "analysis_writing" in node.attrs:
            raise ValueError(f"{store}{'/' + name if name else ''}: its analysis was being replaced when the writer "
                             "stopped; rerun the study, or python -m studies.reanalyze --write STORE")
        if "claim" not in node.array_keys():
            continue
        with xr.open_zarr(str(store), group=name, consolidated=False) as ds:
            out.extend(from_dataset(ds[[v for v in ds.data_vars if v.startswith("claim_")]].load()))
    return out


def from_dataset(ds) -> list[Claim]:
    """The claims stored in a dataset by :func:`to_dataset` (empty list if there are none)."""
    if CLAIM_DIM not in ds.dims:
        return []
    out = []
    for i in range(ds.sizes[CLAIM_DIM]):
        kw = {}
        for name in _STR_FIELDS:
            if f"claim_{name}" not in ds:  # a store written before the field existed
                continue
            v = ds[f"claim_{name}"].values[i]
            kw[name] = "" if v is None else str(v)
        for name in _NUM_FIELDS:
            kw[name] = float(ds[f"claim_{name}"].values[i])
        if not kw.get("kind"):
            kw["kind"] = _legacy_kind(kw.get("test", ""), kw["outcome"])
        out.append(Claim(**kw))
    return out


def _legacy_kind(test: str, outcome: str) -> str:
    """The kind of a claim stored before kinds were data, from its test's wording."""
    if outcome == NOT_TESTED:
        return NOT_TESTED
    for start, kind in (("|measured - predicted|", EQUAL), ("measured >= ", AT_LEAST), ("measured <= ", AT_MOST),
                        ("measured > bound", EXCEEDS), ("measured < bound", EXCEEDS), ("Delta chi^2", FORM)):
        if test.startswith(start):
            return kind
    return DECIDED


# ------------------------------------------------------------------------------ printing
def counts(claims: Iterable[Claim]) -> dict[str, int]:
    out = {k: 0 for k in OUTCOMES}
    for c in claims:
        out[c.outcome] += 1
    return out


def summary_line(claims: Iterable[Claim]) -> str:
    c = counts(claims)
    return f"{c[HOLDS]} hold, {c[FAILS]} fail, {c[NOT_TESTED]} not tested"


def _num(v, se=math.nan) -> str:
    if not np.isfinite(v):
        return "-"
    s = f"{v:.4g}"
    if np.isfinite(se) and se > 0:
        s += f" ± {se:.2g}"
    return s


def _generic_source(text: str) -> str:
    """A tolerance source without its row-specific numbers (the SE value)."""
    import re

    return re.sub(r" × SE [0-9.eE+-]+", " × SE", text)


def format_claims(claims: Sequence[Claim], title: str = "claims") -> str:
    """Every study's one summary format of its claims: a count line; one row per claim
    (outcome, claim, measured ± SE, prediction, tolerance, or why it failed / was not tested);
    then, once per claim, where its tolerance comes from."""
    claims = list(claims)
    rows = [f"{title}: {summary_line(claims)}"]
    if not claims:
        return rows[0]
    prefixes = {c.id.split(".", 1)[0] for c in claims}
    label = (lambda c: c.key.split(".", 1)[1]) if len(prefixes) == 1 else (lambda c: c.key)
    w = max(len(label(c)) for c in claims)
    wm = max(len(_num(c.measured, c.se)) for c in claims)
    wp = min(48, max(len(c.prediction_text or _num(c.prediction)) for c in claims))
    for c in claims:
        mark = {HOLDS: "holds", FAILS: "FAILS", NOT_TESTED: "not tested"}[c.outcome]
        pred = c.prediction_text or _num(c.prediction)
        if c.outcome == NOT_TESTED:
            tail = f"not tested: {c.reason}"
        else:
            tail = f"tol {_num(c.tolerance)}" + (f"; {c.reason}" if c.outcome == FAILS and c.reason else "")
        rows.append(f"  {mark:<10}  {label(c):<{w}}  {_num(c.measured, c.se):<{wm}}  {pred:<{wp}}  {tail}")
    sources = {}
    for c in claims:
        if c.outcome != NOT_TESTED:
            sources.setdefault(c.name, _generic_source(c.tolerance_source))
    if sources:
        rows.append("  tolerances: " + "; ".join(f"{k}: {v}" for k, v in sources.items()))
    return "\n".join(rows)
