r"""Bounded-entry matrix and tensor attention: the polynomial method, in closed form.

Papers: Alman & Song, *Fast attention requires bounded entries* (NeurIPS 2023, **AS23**, k = 2) and
*How to capture higher-order correlations? Generalizing matrix softmax attention to Kronecker
computation* (ICLR 2024, **AS24**, k = 3). Spec: ``shared/specs/tensor_attention.md`` (§ numbers
below refer to it). Tags: [R] read in the papers' public text, [C] reconstructed, [D] derived here.

Symbols and shapes (row-vector layout, rows are tokens)
-------------------------------------------------------
* ``n`` tokens, head dimension ``d``; order ``k`` (k = 2 matrix attention, k = 3 tensor attention).
* Inputs ``Q, K_1..K_{k-1}, V_1..V_{k-1}`` in R^{n x d}, every entry in ``[-B, B]``.
* Logits ``x = s * sum_l Q[i,l] K_1[j_1,l] ... K_{k-1}[j_{k-1},l]``, softmax scale ``s``. The
  papers' convention is ``s = 1/d`` [C for AS24's body; the AS24 abstract shows no scale, R],
  so ``|x| <= s d B^k = B^k``: the **logit range** ``R = B^k`` (:func:`logit_range`; other scales
  give ``|s| d B^k``). Everything below depends on the inputs only through ``R``.

Polynomial approximation of exp (§2.1)
--------------------------------------
A polynomial ``P(x) = sum_{t<=g} c_t x^t`` of degree ``g`` approximates ``e^x`` with **relative**
error ``eps(g, R) = max_{|x|<=R} |P(x) e^{-x} - 1|`` (what attention needs: every weight is off by
the same factor ``1 +- eps``). Two families:

* Taylor ``c_t = 1/t!``. Proven bound (Lagrange remainder, [D]):
  ``eps <= e^R R^{g+1} / (g+1)!`` (the ``e^R`` comes from the negative end).
  Even degrees are positive on all of R (``T_{2m}(x) > 0``), odd ones are not.
* Chebyshev: interpolate ``e^x`` at the ``g+1`` Chebyshev points of the first kind on ``[-R, R]``.
  Proven bound (interpolation remainder, node polynomial ``R^{g+1} T_{g+1}(x/R) / 2^g``, [D]):
  ``|P - e^x| <= e^R R^{g+1} / (2^g (g+1)!)``, so ``eps <= e^{2R} R^{g+1} / (2^g (g+1)!)``.
  Measured ``eps`` is ~2^g smaller than Taylor's (tables of §2.1). Monomial coefficients come
  from ``cheb2poly`` (fine for R <= 4, g <= ~30; §2.1 numerical notes).
* The additive-to-relative **shift** (§2.1, [D]): if ``|P(y) - e^y| <= eps`` on ``[0, 2R]`` then
  ``Pt(x) = e^{-R} P(x + R)`` has ``|Pt(x) - e^x| <= eps e^{-R} <= eps e^x`` on ``[-R, R]``
  (:func:`shift_polynomial`). This is how AS23 turn the AA22 degree bound
  ``g = Theta(max{R, log(1/eps)/log(log(1/eps)/R)})`` [R: AA22 abstract; C: its use in AS23]
  into the relative guarantee (:func:`aa22_degree`; order of magnitude only, constants unknown).
* float64 floor: evaluating a degree-g polynomial costs absolute error ``~ u sum |c_t| R^t`` with
  ``u = 2^-53``, i.e. relative error ``~ e^{2R} u`` at ``x = -R`` (:func:`float64_floor`,
  :func:`rounding_error_bound`).

Low-rank (CP) factorisation (§2.2, §2.3) and rank
--------------------------------------------------
By the multinomial theorem, with ``a_l = q_l k_{1,l} ... k_{k-1,l}``::

    P(s <q, k_1 o ... o k_{k-1}>) = sum_{alpha in N^d, |alpha| <= g} w_alpha q^alpha k_1^alpha ... k_{k-1}^alpha,
    w_alpha = c_{|alpha|} s^{|alpha|} |alpha|! / alpha!,      alpha! = prod_l alpha_l!,

so the polynomial kernel is an exact rank-``r`` CP decomposition with ``r = C(d+g, g)`` multi-indices,
**the same r for every order k** [D] (:func:`rank`). The papers' looser bounds are
``C(2(g+d), 2g)`` (AS23, matrix) and ``C(3(g+d), 3g)`` (AS24, tensor, by analogy) [C]
(:func:`rank_loose`); the redundant tensor-power basis ``x o x ...`` has ``sum_t d^t`` features
(:func:`rank_redundant`). :func:`multi_indices` enumerates the multi-indices in graded order with a
parent pointer (``alpha = parent + e_var``) so features build level by level in O(n r);
:func:`feature_weights` gives ``w_alpha``; :func:`sympy_multinomial_table` and
:func:`sympy_kernel_residual` derive the same expansion symbolically (the tests compare them).

Error guarantee (§2.5, [D]; AS23's analogue states ``4 eps ||V||_inf`` [C])
----------------------------------------------------------------------------
If every weight is ``A (1 + E)`` with ``|E| <= eps < 1``, every normalised weight is within
``p * 2 eps / (1 - eps)``, so ``||T - T*||_inf <= 2 eps/(1 - eps) * ||V_1||_inf ... ||V_{k-1}||_inf``
independently of n (:func:`output_error_bound`); the values' bound is ``B^{k-1}`` for entries in
[-B, B].

Independent reference for the certified bound ([D]; used by the study's claims)
-------------------------------------------------------------------------------
The study checks ``||T_approx - T_exact||_inf <= 2 eps/(1 - eps) prod ||V_m||`` with an ``eps`` that
does **not** come from the coefficients the approximation used (:func:`approximation_coefficients`),
so that a wrong coefficient there is caught: :func:`reference_relative_error` computes ``eps`` from
the closed-form Taylor remainder ``e^{-x} sum_{t>g} x^t/t!`` (no coefficients at all) or from the
Chebyshev interpolant in the Chebyshev basis (discrete cosine formula, Clenshaw evaluation; no
monomial conversion), on the fine grid of notes tensor_attention §5 item 13. :func:`coefficient_mass` bounds
``sum_t |c_t| R^t`` of the same polynomials (exact rationals; ``sum_j |a_j| ||T_j||_1`` for
Chebyshev, which also bounds the float64 conversion error), and :func:`rounding_allowance` turns it
into a relative float64 allowance on every kernel value.

Running time and thresholds (§2.6, §3)
--------------------------------------
* Exact: ``n^k`` tuples of ``~2d+1`` flops (:func:`exact_flops`). Approximate: ``k`` feature maps
  (``n r``), ``k-1`` contractions ``U_m^T V_m`` (``n r d``), the query side (``n r d``): about
  ``n r k (d+2)`` flops (:func:`approx_flops`). With ``lower_order=True`` both add the terms the
  engines also pay (exact: ``d`` prefix products per query and prefix tuple, ``dv`` per query to
  normalise; approximate: the ``r (d+1) (k-1) + r`` products that combine the key sides), and
  :func:`flop_slope` is the log-log slope of that model over a window of n: what a runtime fit
  over the window should measure if time is proportional to flops. Crossover ``n`` where they meet
  (:func:`crossover_n`); the entry bound at which the approximation stops paying at a given n
  (:func:`crossover_entry_bound`).
* Entry-bound threshold of near-linear time for order k: ``B = o((log n)^{1/k})``; at
  ``B = Theta((log n)^{1/k})`` no ``n^{k - o(1)}``-beating algorithm exists under SETH
  (k = 2: AS23 [R]; k = 3: AS24 [R]; general k [C]) (:func:`entry_threshold`).

Match3 (§5.1, SHT23 [C])
------------------------
Labels ``Match3(x)_i = 1`` iff ``x_i + x_j1 + x_j2 = 0 (mod M)`` for some ``j1, j2`` (indices
unrestricted). The exact tensor-attention construction of §5.1 uses logits
``lam cos(2 pi (x_i + x_j1 + x_j2)/M)`` with ``lam = ln(100 N^2) / (1 - cos(2 pi/M))`` and the
threshold ``(1 + cos(2 pi/M))/2`` on the attention-weighted mean cosine (:func:`match3_lambda`,
:func:`match3_threshold`); balanced labels need ``M ~ N^2 / ln 4`` (:func:`match3_balanced_M`).
With the ``1/d`` convention and ``d = 4`` the construction's entry bound is ``(4 lam)^{1/3}``
(:func:`match3_entry_bound`), far outside the bounded-entry regime.

Why the construction is exact ([D]): with ``c1 = cos(2 pi/M)``, a token with a matching pair has
``1 - s <= sum_J (1 - c_J) e^{-lam (1 - c_J)} <= N^2 (1 - c1)/(100 N^2)`` (each term is largest at
``1 - c_J = 1 - c1`` since ``lam (1 - c1) = ln(100 N^2) > 1``), so ``s - threshold >= 0.49 (1 - c1)``;
a token without one has ``s <= c1 = threshold - (1 - c1)/2``. The readout's margin is therefore
``0.49 (1 - c1)`` (:func:`match3_readout_margin`); float64 evaluation moves ``s`` by at most
:func:`match3_rounding_error` (logit errors ``~ lam u`` and the sums), and the predicted accuracy
(:func:`match3_predicted_accuracy`) is 1 where the margin exceeds it, no prediction where it does
not.

Everything here is a deterministic function of its parameters (numpy, scipy, sympy only).
"""
from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

import numpy as np
from numpy.polynomial import chebyshev as _cheb

__all__ = [
    "METHODS",
    "UNIT_ROUNDOFF",
    "logit_range",
    "entry_threshold",
    "taylor_coefficients",
    "chebyshev_coefficients",
    "approximation_coefficients",
    "is_positive_everywhere",
    "polyval",
    "shift_polynomial",
    "relative_error",
    "absolute_error",
    "taylor_error_bound",
    "chebyshev_error_bound",
    "relative_error_bound",
    "min_degree",
    "aa22_degree",
    "float64_floor",
    "rounding_error_bound",
    "rank",
    "rank_loose",
    "rank_redundant",
    "MultiIndex",
    "multi_indices",
    "feature_weights",
    "sympy_multinomial_table",
    "sympy_kernel_residual",
    "output_error_bound",
    "output_error_bound_as23",
    "exact_flops",
    "approx_flops",
    "crossover_n",
    "crossover_entry_bound",
    "match3_balanced_M",
    "match3_lambda",
    "match2_lambda",
    "match3_threshold",
    "match3_entry_bound",
    "match3_readout_margin",
    "match3_rounding_error",
    "match3_predicted_accuracy",
    "reference_relative_error",
    "relative_error_profile",
    "predicted_output_error",
    "coefficient_mass",
    "rounding_allowance",
    "flop_slope",
    "check_degree",
]

METHODS = ("taylor", "chebyshev")
UNIT_ROUNDOFF = 2.0**-53
_GRID = 2049  # points of each of the two grids of relative_error


# ------------------------------------------------------------------------------ ranges
def logit_range(B: float, k: int = 3, d: int | None = None, scale: float | None = None) -> float:
    """Largest possible ``|logit|`` for entries in ``[-B, B]``: ``|s| d B^k`` (``B^k`` when
    ``scale`` is None, the papers' ``s = 1/d``). Tight for sign-aligned inputs.

    Examples
    --------
    >>> logit_range(2.0, k=3)  # entries in [-2, 2], scale 1/d: B^3
    8.0
    >>> logit_range(1.0, k=2, d=4, scale=0.5)  # scale 1/sqrt(d): |s| d B^k
    2.0
    """
    if B < 0:
        raise ValueError("the entry bound B must be non-negative")
    if k < 2:
        raise ValueError("the attention order k must be >= 2")
    if scale is None:
        return float(B) ** k
    if d is None:
        raise ValueError("an explicit scale needs the head dimension d")
    return abs(float(scale)) * d * float(B) ** k


def entry_threshold(n, k: int = 3):
    """``(log n)^{1/k}``: entries must be ``o`` of this for near-linear time (order k)."""
    n = np.asarray(n, dtype=float)
    if np.any(n <= 1):
        raise ValueError("n must exceed 1")
    return np.log(n) ** (1.0 / k)


# ------------------------------------------------------------------ polynomial families
def taylor_coefficients(g: int) -> np.ndarray:
    """``c_t = 1/t!`` for ``t = 0..g``.

    Examples
    --------
    >>> taylor_coefficients(3).tolist()
    [1.0, 1.0, 0.5, 0.16666666666666666]
    """
    g = check_degree(g)
    return np.array([1.0 / math.factorial(t) for t in range(g + 1)])


@functools.lru_cache(maxsize=512)
def _cheb_cached(g: int, R: float) -> tuple:
    ct = _cheb.chebinterpolate(lambda t: np.exp(R * t), g)  # coefficients in t = x/R
    pt = _cheb.cheb2poly(ct)
    pt = np.concatenate([pt, np.zeros(g + 1 - pt.size)])
    with np.errstate(over="ignore", divide="ignore", invalid="ignore", under="ignore"):
        c = pt / R ** np.arange(g + 1)
    # the interpolant is exact at its nodes: a monomial form that misses e^x there by more than
    # 1e-3 (relative) has lost its accuracy to cancellation in float64
    nodes = R * _cheb.chebpts1(g + 1)
    with np.errstate(over="ignore", invalid="ignore"):
        miss = np.abs(polyval(c, nodes) * np.exp(-nodes) - 1.0) if np.all(np.isfinite(c)) else np.inf
    if not np.all(np.isfinite(c)) or not np.max(miss) <= 1e-3:
        raise ValueError(f"the Chebyshev interpolant of degree {g} on [-{R:g}, {R:g}] loses its accuracy in "
                         "the float64 monomial basis")
    return tuple(c.tolist())


def chebyshev_coefficients(g: int, R: float) -> np.ndarray:
    """Monomial coefficients (in x) of the interpolant of ``e^x`` at the ``g+1`` Chebyshev
    points of the first kind on ``[-R, R]``. Raises ValueError when the float64 monomial form no
    longer reproduces ``e^x`` at the nodes to 1e-3 (large R or g, notes tensor_attention §2.1 numerical notes)."""
    g = check_degree(g)
    R = float(R)
    if not R > 0:
        raise ValueError("the Chebyshev design range R must be positive")
    return np.array(_cheb_cached(g, R))


def approximation_coefficients(g: int, R: float, method: str = "taylor") -> np.ndarray:
    """Monomial coefficients ``c_0..c_g`` of the degree-g approximation of ``e^x`` used on
    ``[-R, R]`` (Taylor ignores R)."""
    if method == "taylor":
        return taylor_coefficients(g)
    if method == "chebyshev":
        return chebyshev_coefficients(g, R)
    raise ValueError(f"unknown approximation method {method!r}; choose one of {METHODS}")


def is_positive_everywhere(g: int, method: str) -> bool:
    """True when the approximation is positive on the whole real line for *any* input, so
    normalisers stay positive outside the design range: even-degree Taylor polynomials."""
    return method == "taylor" and g % 2 == 0


def polyval(coeffs, x):
    """``sum_t c_t x^t`` (Horner, float64).

    Examples
    --------
    >>> float(polyval([1.0, 2.0, 3.0], 2.0))  # 1 + 2 x + 3 x^2 at x = 2
    17.0
    """
    x = np.asarray(x, dtype=float)
    out = np.zeros_like(x)
    for c in np.asarray(coeffs, dtype=float)[::-1]:
        out = out * x + c
    return out


def shift_polynomial(coeffs, R: float) -> np.ndarray:
    """Coefficients of ``e^{-R} P(x + R)``: turns an additive approximation of ``e^y`` on
    ``[0, 2R]`` into a relative one of ``e^x`` on ``[-R, R]`` (§2.1, [D]).

    Examples
    --------
    ``P(y) = 1 + y`` shifted by R = 1 is ``e^{-1} (2 + x)``:

    >>> [round(float(c), 12) for c in shift_polynomial([1.0, 1.0], 1.0)]
    [0.735758882343, 0.367879441171]
    """
    c = np.asarray(coeffs, dtype=float)
    g = c.size - 1
    out = np.zeros(g + 1)
    for t in range(g + 1):  # c_t (x + R)^t = sum_j C(t, j) R^{t-j} x^j
        for j in range(t + 1):
            out[j] += c[t] * math.comb(t, j) * R ** (t - j)
    return out * math.exp(-R)


def _grid(R: float) -> np.ndarray:
    cheb = R * np.cos(np.linspace(0.0, np.pi, _GRID))
    return np.unique(np.concatenate([cheb, np.linspace(-R, R, _GRID)]))


def relative_error(coeffs, R: float) -> float:
    """Measured ``eps = max_{|x| <= R} |P(x) e^{-x} - 1|`` on a fine deterministic grid
    (Chebyshev-clustered plus uniform, endpoints included), float64 evaluation; ``inf`` when the
    ratio overflows (R in the hundreds).

    Examples
    --------
    The degree-4 Taylor polynomial on [-1, 1] is worst at x = -1, where
    ``T_4(-1) = 3/8``, so ``eps = 3e/8 - 1``, below the proven bound ``e/5!`` of
    :func:`taylor_error_bound`:

    >>> round(relative_error(taylor_coefficients(4), 1.0), 12)
    0.019355685672
    >>> round(3 * math.e / 8 - 1, 12), round(taylor_error_bound(4, 1.0), 12)
    (0.019355685672, 0.02265234857)
    """
    if R < 0:
        raise ValueError("R must be non-negative")
    x = _grid(float(R)) if R > 0 else np.zeros(1)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        p = polyval(coeffs, x)
        ratio = np.sign(p) * np.exp(np.log(np.abs(p)) - x)  # P(x) e^{-x} without overflow
    err = np.abs(ratio - 1.0)
    return float(np.max(err)) if np.all(np.isfinite(err)) else math.inf


def absolute_error(coeffs, lo: float, hi: float) -> float:
    """``max_{lo <= x <= hi} |P(x) - e^x|`` on a fine grid (the additive error of §2.1)."""
    x = np.linspace(lo, hi, 2 * _GRID)
    return float(np.max(np.abs(polyval(coeffs, x) - np.exp(x))))


def taylor_error_bound(g: int, R: float) -> float:
    """Proven relative error of the degree-g Taylor polynomial on ``[-R, R]``:
    ``e^R R^{g+1}/(g+1)!`` ([D], Lagrange remainder)."""
    g = check_degree(g)
    return float(math.exp(R + (g + 1) * math.log(R) - math.lgamma(g + 2))) if R > 0 else 0.0


def chebyshev_error_bound(g: int, R: float) -> float:
    """Proven relative error of the degree-g Chebyshev interpolant on ``[-R, R]``:
    ``e^{2R} R^{g+1} / (2^g (g+1)!)`` ([D], interpolation remainder at first-kind nodes).

    Examples
    --------
    Degree 4 on [-1, 1]: ``e^2 / (2^4 5!)``, about six times below Taylor's ``e / 5!``:

    >>> round(chebyshev_error_bound(4, 1.0), 12)
    0.003848466718
    >>> round(math.e**2 / (16 * 120), 12)
    0.003848466718
    """
    g = check_degree(g)
    if R <= 0:
        return 0.0
    return float(math.exp(2 * R + (g + 1) * math.log(R) - g * math.log(2.0) - math.lgamma(g + 2)))


def relative_error_bound(g: int, R: float, method: str = "taylor") -> float:
    if method == "taylor":
        return taylor_error_bound(g, R)
    if method == "chebyshev":
        return chebyshev_error_bound(g, R)
    raise ValueError(f"unknown approximation method {method!r}; choose one of {METHODS}")


def min_degree(R: float, eps: float, method: str = "taylor", *, use: str = "measured",
               g_max: int = 80) -> int:
    """Smallest degree g whose relative error on ``[-R, R]`` is ``<= eps``: measured on the grid
    (``use="measured"``, the tables of §2.1) or by the proven bound (``use="bound"``). Raises
    ValueError when no g <= g_max reaches eps (e.g. below the float64 floor ``e^{2R} u``).

    Examples
    --------
    Relative error 1e-3 on [-1, 1]:

    >>> min_degree(1.0, 1e-3, "taylor"), min_degree(1.0, 1e-3, "chebyshev")
    (6, 5)
    """
    if not eps > 0:
        raise ValueError("the target error eps must be positive")
    if use not in ("measured", "bound"):
        raise ValueError("use must be 'measured' or 'bound'")
    for g in range(g_max + 1):
        if use == "bound":
            e = relative_error_bound(g, R, method)
        else:
            try:
                e = relative_error(approximation_coefficients(g, R, method), R)
            except ValueError:  # Chebyshev conversion broke down: no higher degree will do
                break
        if e <= eps:
            return g
    raise ValueError(f"no {method} degree <= {g_max} reaches relative error {eps:g} on "
                     f"[-{R:g}, {R:g}] (float64 floor ~ {float64_floor(R):.1e})")


def aa22_degree(R, eps):
    """The AA22 degree scale ``max{R, log(1/eps) / log(log(1/eps)/R)}`` (Theta, constants
    unknown [R abstract]); the second term is used only where ``log(1/eps) > e R``."""
    R = np.asarray(R, dtype=float)
    L = math.log(1.0 / eps)
    with np.errstate(divide="ignore", invalid="ignore"):
        second = np.where(L > np.e * R, L / np.log(np.maximum(L / np.maximum(R, 1e-300), np.e)), R)
    return np.maximum(R, second)


def float64_floor(R: float) -> float:
    """Relative-error floor of a global polynomial for ``e^x`` on ``[-R, R]`` in float64."""
    return math.exp(2.0 * R) * UNIT_ROUNDOFF


def rounding_error_bound(coeffs, R: float, n_terms: int) -> float:
    """A bound on the *relative* rounding error of a float64 kernel value computed as a sum of
    ``n_terms`` signed products (the feature sums), ``~ n_terms u sum |c_t| R^t e^R``."""
    a = np.abs(np.asarray(coeffs, dtype=float))
    return float((n_terms + a.size + 4) * UNIT_ROUNDOFF * polyval(a, R) * math.exp(R))


# ---------------------------------------------------------------------------- ranks
def rank(d: int, g: int) -> int:
    """Tight CP rank of the degree-g polynomial kernel: ``C(d+g, g)`` (any order k, [D]).

    Examples
    --------
    d = 2, g = 2: the 6 monomials ``1, q1, q2, q1^2, q1 q2, q2^2``, against the papers' looser
    ``C(8, 4)`` (k = 2) and the 7 features of the tensor-power basis ``1 + 2 + 4``:

    >>> rank(2, 2), rank_loose(2, 2, k=2), rank_redundant(2, 2)
    (6, 70, 7)
    """
    return math.comb(int(d) + int(g), int(g))


def rank_loose(d: int, g: int, k: int = 2) -> int:
    """The papers' looser bound ``C(k(g+d), k g)`` (k = 2: AS23; k = 3: AS24 by analogy) [C]."""
    return math.comb(k * (int(g) + int(d)), k * int(g))


def rank_redundant(d: int, g: int) -> int:
    """Feature count of the redundant tensor-power basis ``sum_{t<=g} d^t``."""
    return sum(int(d) ** t for t in range(int(g) + 1))


@dataclass(frozen=True)
class MultiIndex:
    """Multi-indices ``alpha`` with ``|alpha| <= g`` in graded order.

    ``alphas`` (r, d) exponents; ``degree`` (r,) ``|alpha|``; ``parent`` (r,) index of
    ``alpha - e_var`` (-1 for alpha = 0); ``var`` (r,) the variable added (-1 for alpha = 0);
    ``levels[t]`` = (start, stop) rows of degree t."""

    d: int
    g: int
    alphas: np.ndarray
    degree: np.ndarray
    parent: np.ndarray
    var: np.ndarray
    levels: tuple

    @property
    def r(self) -> int:
        return int(self.alphas.shape[0])


@functools.lru_cache(maxsize=64)
def multi_indices(d: int, g: int) -> MultiIndex:
    """Enumerate ``{alpha in N^d : |alpha| <= g}`` degree by degree (notes tensor_attention §2.3).

    Examples
    --------
    >>> mi = multi_indices(2, 2)
    >>> mi.alphas.tolist()
    [[0, 0], [1, 0], [0, 1], [2, 0], [1, 1], [0, 2]]
    >>> mi.parent.tolist(), mi.levels
    ([-1, 0, 0, 1, 1, 2], ((0, 1), (1, 3), (3, 6)))
    """
    d, g = int(d), check_degree(g)
    if d < 1:
        raise ValueError("d must be >= 1")
    combos, pos = [], {}
    parent, var, levels = [], [], []
    for t in range(g + 1):
        start = len(combos)
        for c in itertools.combinations_with_replacement(range(d), t):
            pos[c] = len(combos)
            combos.append(c)
            parent.append(pos[c[:-1]] if t else -1)
            var.append(c[-1] if t else -1)
        levels.append((start, len(combos)))
    alphas = np.zeros((len(combos), d), dtype=np.int64)
    for row, c in enumerate(combos):
        for v in c:
            alphas[row, v] += 1
    for arr in (alphas,):
        arr.setflags(write=False)
    return MultiIndex(d, g, alphas, alphas.sum(axis=1), np.array(parent, dtype=np.int64),
                      np.array(var, dtype=np.int64), tuple(levels))


def feature_weights(index: MultiIndex, coeffs, scale: float) -> np.ndarray:
    """``w_alpha = c_{|alpha|} s^{|alpha|} |alpha|!/alpha!`` for every multi-index.

    Examples
    --------
    Degree-2 Taylor, s = 1, d = 2: ``1 + x + x^2/2`` with ``x = q1 k1 + q2 k2`` expands to
    ``1 + q1 k1 + q2 k2 + (q1 k1)^2/2 + q1 k1 q2 k2 + (q2 k2)^2/2``:

    >>> feature_weights(multi_indices(2, 2), taylor_coefficients(2), 1.0).tolist()
    [1.0, 1.0, 1.0, 0.5, 1.0, 0.5]
    """
    c = np.asarray(coeffs, dtype=float)
    if c.size != index.g + 1:
        raise ValueError(f"need {index.g + 1} coefficients, got {c.size}")
    deg = index.degree
    from scipy.special import gammaln

    log_multinom = gammaln(deg + 1.0) - gammaln(index.alphas + 1.0).sum(axis=1)
    return c[deg] * float(scale) ** deg * np.exp(log_multinom)


def sympy_multinomial_table(d: int, g: int) -> dict:
    """``{alpha: |alpha|!/alpha!}`` for all ``|alpha| <= g``, from sympy's multinomial theorem."""
    from sympy.ntheory.multinomial import multinomial_coefficients

    table = {tuple([0] * d): 1}
    for t in range(1, g + 1):
        table.update({tuple(a): int(v) for a, v in multinomial_coefficients(d, t).items()})
    return table


def sympy_kernel_residual(d: int, g: int, k: int = 3):
    """Symbolic check of the feature expansion: ``P(s sum_l q_l prod_m k_{m,l})`` minus
    ``sum_alpha c_|alpha| s^|alpha| |alpha|!/alpha! q^alpha prod_m k_m^alpha``, expanded (0 iff
    the expansion is right). Symbols ``c_t`` (coefficients) and ``s`` (scale) stay free."""
    import sympy as sp

    q = sp.symbols(f"q0:{d}")
    ks = [sp.symbols(f"k{m}_0:{d}") for m in range(k - 1)]
    s = sp.Symbol("s")
    c = sp.symbols(f"c0:{g + 1}")
    x = s * sum(q[l] * sp.Mul(*[km[l] for km in ks]) for l in range(d))
    lhs = sum(c[t] * x**t for t in range(g + 1))
    rhs = 0
    for alpha, mult in sympy_multinomial_table(d, g).items():
        t = sum(alpha)
        mono = sp.Mul(*[(q[l] * sp.Mul(*[km[l] for km in ks])) ** alpha[l] for l in range(d)])
        rhs += c[t] * s**t * mult * mono
    return sp.expand(lhs - rhs)


# ----------------------------------------------------------------------- error bounds
def output_error_bound(eps, vmax):
    """``2 eps/(1 - eps) * vmax`` (inf where eps >= 1): the n-free bound on
    ``||T_approx - T_exact||_inf``; ``vmax = prod_m ||V_m||_inf``.

    Examples
    --------
    >>> round(float(output_error_bound(0.01, 1.0)), 12)  # 0.02/0.99
    0.020202020202
    >>> float(output_error_bound(1.0, 1.0))
    inf
    """
    eps = np.asarray(eps, dtype=float)
    with np.errstate(divide="ignore"):
        return np.where(eps < 1.0, 2.0 * eps / (1.0 - eps) * vmax, np.inf)


def output_error_bound_as23(eps, vmax):
    """The AS23-style statement ``4 eps ||V||_inf`` [C] (valid for eps <= 1/2)."""
    return 4.0 * np.asarray(eps, dtype=float) * vmax


# ------------------------------------------------- independent reference (for the claims)
def _taylor_tail_relative(g: int, x: np.ndarray) -> np.ndarray:
    """``e^{-x} sum_{t>g} x^t/t!`` = ``e^{-x} (e^x - T_g(x))``: the relative error of the degree-g
    Taylor polynomial at x, summed from the remainder series (no polynomial coefficients)."""
    x = np.asarray(x, dtype=float)
    ax = np.abs(x)
    top = int(g + 60 + 4 * math.ceil(float(ax.max(initial=0.0))))
    t = np.arange(g + 1, top + 1, dtype=float)
    with np.errstate(divide="ignore"):
        logterm = t[None, :] * np.log(ax)[:, None] - np.array([math.lgamma(v + 1.0) for v in t])[None, :]
    sign = np.where((x[:, None] < 0) & (t[None, :] % 2 == 1), -1.0, 1.0)
    terms = np.where(ax[:, None] > 0, sign * np.exp(logterm - x[:, None]), 0.0)
    return terms.sum(axis=1)


@functools.lru_cache(maxsize=2048)
def _chebyshev_basis(g: int, R: float) -> tuple:
    """``a_0..a_g`` of the interpolant ``sum_j a_j T_j(x/R)`` of ``e^x`` at the g+1 first-kind
    Chebyshev points of ``[-R, R]``, by the discrete cosine formula (math.fsum)."""
    m = g + 1
    theta = [(i + 0.5) * math.pi / m for i in range(m)]
    f = [math.exp(R * math.cos(th_)) for th_ in theta]
    a = [2.0 / m * math.fsum(fi * math.cos(j * th_) for fi, th_ in zip(f, theta)) for j in range(m)]
    a[0] /= 2.0
    return tuple(a)


@functools.lru_cache(maxsize=128)
def _chebyshev_T_abs_sums(g: int) -> tuple:
    """``||T_j||_1`` = sum of |monomial coefficients| of T_j, j = 0..g (exact integer recurrence)."""
    prev, cur = [1], [0, 1]
    out = [1, 1]
    for _ in range(2, g + 1):
        nxt = [0] + [2 * c for c in cur]
        for i, c in enumerate(prev):
            nxt[i] -= c
        prev, cur = cur, nxt
        out.append(sum(abs(c) for c in cur))
    return tuple(out[: g + 1])


def _clenshaw(a, t):
    b1 = np.zeros_like(t)
    b2 = np.zeros_like(t)
    for aj in a[:0:-1]:
        b1, b2 = 2.0 * t * b1 - b2 + aj, b1
    return t * b1 - b2 + a[0]


@functools.lru_cache(maxsize=4096)
def reference_relative_error(g: int, R: float, method: str = "taylor") -> float:
    """``eps = max_{|x| <= R} |P(x) e^{-x} - 1|`` of the degree-g Taylor polynomial or Chebyshev
    interpolant, computed **independently of the coefficients the approximation uses**: Taylor
    from the remainder series ``e^{-x} sum_{t>g} x^t/t!``, Chebyshev from its Chebyshev-basis
    coefficients (discrete cosine formula) by Clenshaw's recurrence; on the fine grid of notes tensor_attention §5
    item 13 (:func:`relative_error`'s grid). ``inf`` when not finite."""
    g = check_degree(g)
    R = float(R)
    if R < 0:
        raise ValueError("R must be non-negative")
    if R == 0:
        return 0.0
    x = _grid(R)
    with np.errstate(over="ignore", invalid="ignore"):
        if method == "taylor":
            err = np.abs(_taylor_tail_relative(g, x))
        elif method == "chebyshev":
            err = np.abs(_clenshaw(np.array(_chebyshev_basis(g, R)), x / R) * np.exp(-x) - 1.0)
        else:
            raise ValueError(f"unknown approximation method {method!r}; choose one of {METHODS}")
    return float(np.max(err)) if np.all(np.isfinite(err)) else math.inf


def relative_error_profile(g: int, R: float, method: str, x) -> np.ndarray:
    """``delta(x) = P(x) e^{-x} - 1`` of the degree-g polynomial (Taylor, or Chebyshev interpolant on
    ``[-R, R]``) at the points ``x``, from the reference forms, independent of the coefficients the
    approximation uses (notes tensor_attention §2.8): Taylor from the closed form of its remainder,
    ``-P(g+1, x)`` (regularised lower incomplete gamma) for x >= 0 and
    ``(-1)^g y^{g+1}/(g+1)! 1F1(g+1; g+2; y)`` (y = -x, a positive series) for x < 0, both
    accurate to the last digits however small; Chebyshev by Clenshaw's recurrence in its basis."""
    from scipy import special

    g = check_degree(g)
    x = np.asarray(x, dtype=float)
    if method == "taylor":
        out = np.empty_like(x)
        pos = x >= 0
        out[pos] = -special.gammainc(g + 1, x[pos])
        y = -x[~pos]
        with np.errstate(over="ignore"):
            logc = (g + 1) * np.log(y) - math.lgamma(g + 2)
            out[~pos] = (-1.0) ** g * np.exp(logc) * special.hyp1f1(g + 1, g + 2, y)
        return out
    if method == "chebyshev":
        if float(R) <= 0:
            return np.zeros_like(x)
        with np.errstate(over="ignore", invalid="ignore"):
            return _clenshaw(np.array(_chebyshev_basis(g, float(R))), x / float(R)) * np.exp(-x) - 1.0
    raise ValueError(f"unknown approximation method {method!r}; choose one of {METHODS}")


def _taylor_profiles(x: np.ndarray, degrees) -> dict:
    """``delta_g(x) = e^{-x} T_g(x) - 1`` for every g of ``degrees`` in one pass over the partial
    sums of the exponential series (term recurrence, no coefficients). Its absolute error is a few
    ``u (e^R sum_{t<=g} R^t/t! + |delta|)``, within :func:`rounding_allowance` (which carries the
    factor ``n_terms + g + 5``) wherever ``|delta| < 1``: enough for :func:`predicted_output_error`,
    whose output error is set by absolute errors of delta (:func:`relative_error_profile` is
    accurate to the last digits, and slower)."""
    want = {int(g) for g in degrees}
    out = {}
    e = np.exp(-x)
    term = np.ones_like(x)
    partial = np.ones_like(x)
    for t in range(max(want) + 1):
        if t > 0:
            term = term * x / t
            partial = partial + term
        if t in want:
            out[t] = e * partial - 1.0
    return out


def predicted_output_error(Q, keys, values, degrees, methods, R: float, scale: float, *,
                           chunk: int = 64) -> np.ndarray:
    """``max_{i,l} |T_approx - T|`` that the polynomial method must produce on these inputs, from
    theory alone (notes tensor_attention §2.8): with the exact softmax weights ``p_J`` of query i over the key
    tuples J and the polynomial's relative errors ``delta_J = delta(logit_J)``, every weight of
    the approximation is ``p_J (1 + delta_J)`` up to the common normaliser, so, exactly,

        T_approx - T = sum_J p_J (delta_J - delta_bar) V_J / (1 + delta_bar),   delta_bar = sum_J p_J delta_J,

    ``V_J`` the entrywise product of the value rows of the tuple. delta comes from theory's own
    forms, never from the approximation's coefficients: the partial sums of the exponential series
    (Taylor, :func:`_taylor_profiles`) or Clenshaw's recurrence in the Chebyshev basis
    (:func:`relative_error_profile`). Returns ``(len(methods), len(degrees))``; NaN where
    ``1 + delta_bar <= 0`` for some query (no prediction). ``Q (n, d)``, ``keys``/``values``
    lists of ``(n, d)`` / ``(n, dv)`` NumPy arrays; ``R`` the design range, ``scale`` the softmax
    scale."""
    Q = np.asarray(Q, dtype=float)
    keys = [np.asarray(K, dtype=float) for K in keys]
    values = [np.asarray(V, dtype=float) for V in values]
    KR, VR = keys[0], values[0]
    for K, V in zip(keys[1:], values[1:]):  # Khatri-Rao rows, j_1 slowest (the order is immaterial)
        KR = (KR[:, None, :] * K[None, :, :]).reshape(-1, K.shape[1])
        VR = (VR[:, None, :] * V[None, :, :]).reshape(-1, V.shape[1])
    V1 = np.concatenate([VR, np.ones((VR.shape[0], 1))], axis=1)  # the last column gives delta_bar
    dv = VR.shape[1]
    out = np.zeros((len(methods), len(degrees)))
    for s in range(0, Q.shape[0], chunk):
        logits = float(scale) * (Q[s:s + chunk] @ KR.T)  # (c, n^{k-1})
        w = np.exp(logits - logits.max(axis=1, keepdims=True))
        p = w / w.sum(axis=1, keepdims=True)
        T = p @ VR
        for im, method in enumerate(methods):
            prof = _taylor_profiles(logits, degrees) if method == "taylor" else None
            for ig, g in enumerate(degrees):
                delta = prof[int(g)] if prof is not None else relative_error_profile(int(g), R, method, logits)
                A = (p * delta) @ V1
                dbar = A[:, dv:]
                if not np.all(np.isfinite(A)) or np.any(1.0 + dbar <= 0):
                    out[im, ig] = np.nan
                    continue
                diff = (A[:, :dv] - dbar * T) / (1.0 + dbar)
                if np.isfinite(out[im, ig]):
                    out[im, ig] = max(out[im, ig], float(np.abs(diff).max()))
    return out


def coefficient_mass(g: int, R: float, method: str = "taylor") -> float:
    """A bound on ``sum_t |c_t| R^t`` of the degree-g polynomial, from the reference forms:
    ``sum_{t<=g} R^t/t!`` (Taylor, exact) or ``sum_j |a_j| ||T_j||_1`` (Chebyshev; it also
    bounds the float64 error of converting the interpolant to monomials)."""
    g = check_degree(g)
    R = float(R)
    if method == "taylor":
        return math.fsum(R**t / math.factorial(t) for t in range(g + 1))
    if method == "chebyshev":
        if R <= 0:
            return 1.0
        return math.fsum(abs(a) * s for a, s in zip(_chebyshev_basis(g, R), _chebyshev_T_abs_sums(g)))
    raise ValueError(f"unknown approximation method {method!r}; choose one of {METHODS}")


def rounding_allowance(g: int, R: float, method: str, n_terms: int) -> float:
    """Relative float64 allowance on every kernel value of the polynomial method: a sum of
    ``n_terms`` signed products of total size ``<= coefficient_mass`` against a value
    ``>= e^{-R}``: ``(n_terms + g + 5) u mass e^R`` (first order, the form of
    :func:`rounding_error_bound` with the reference mass)."""
    return float((n_terms + g + 5) * UNIT_ROUNDOFF * coefficient_mass(g, R, method) * math.exp(R))


# ------------------------------------------------------------------------ cost model
def exact_flops(n, d: int, k: int = 3, *, lower_order: bool = False, dv: int | None = None):
    """``n^k (2d + 1)``: one d-term logit, one exp and d value products per tuple; with
    ``lower_order``, plus ``d n^{k-1}`` (prefix products per query and prefix tuple) and ``dv n``
    (normalising the output)."""
    n = np.asarray(n, dtype=float)
    out = n**k * (2 * d + 1)
    if lower_order:
        out = out + d * n ** (k - 1) + (d if dv is None else dv) * n
    return out


def approx_flops(n, d: int, g: int, k: int = 3, *, lower_order: bool = False):
    """``n r k (d + 2)`` with ``r = C(d+g, g)`` (notes tensor_attention §2.4); with ``lower_order``, plus the
    n-independent ``r (d+1) (k-1) + r`` products that combine the key sides and weight the query
    features."""
    r = rank(d, g)
    out = np.asarray(n, dtype=float) * r * k * (d + 2)
    if lower_order:
        out = out + r * (d + 1) * (k - 1) + r
    return out


def flop_slope(n, d: int, k: int, g: int | None = None) -> float:
    """Least-squares slope of ``log flops`` on ``log n`` over the points ``n`` of the flop model
    with its lower-order terms: exact order-k attention (``g`` None) or the degree-g
    approximation. What a runtime fit over these n measures if time is proportional to flops."""
    n = np.asarray(n, dtype=float)
    if n.size < 2:
        raise ValueError("a slope needs >= 2 sizes")
    f = exact_flops(n, d, k, lower_order=True) if g is None else approx_flops(n, d, g, k, lower_order=True)
    return float(np.polyfit(np.log(n), np.log(f), 1)[0])


def crossover_n(d: int, g: int, k: int = 3) -> float:
    """``n`` at which :func:`exact_flops` equals :func:`approx_flops`:
    ``(r k (d+2)/(2d+1))^{1/(k-1)}``.

    Examples
    --------
    d = 4, g = 2, k = 3: ``r = 15`` and ``n = sqrt(15 * 3 * 6 / 9) = sqrt(30)``:

    >>> round(crossover_n(4, 2, 3), 9), round(math.sqrt(30), 9)
    (5.477225575, 5.477225575)
    >>> float(exact_flops(10, 4, 3)), float(approx_flops(10, 4, 2, 3))
    (9000.0, 2700.0)
    """
    return float((rank(d, g) * k * (d + 2) / (2 * d + 1)) ** (1.0 / (k - 1)))


def crossover_entry_bound(n: int, d: int, k: int, eps: float, method: str = "chebyshev") -> float:
    """Largest entry bound B at which the approximation with relative error ``eps`` on the
    range ``B^k`` still costs no more flops than exact attention at this n (notes tensor_attention §5 item 15).
    Degrees are capped at 40 (the monomial conversion's limit) and ``B^k`` at 64; returns 0 when
    nothing qualifies. For small d the rank is cheap and the float64 floor binds instead:
    ``e^{2R} u <= eps`` caps ``R = B^k`` near ``log(eps/u)/2`` (11.4 for eps = 1e-6)."""
    g_best = -1
    for g in range(0, 41):  # monomial conversion of Chebyshev interpolants is unreliable beyond
        if approx_flops(n, d, g, k) > exact_flops(n, d, k):
            break
        g_best = g
    if g_best < 0:
        return 0.0

    def ok(R):
        try:
            return relative_error(approximation_coefficients(g_best, R, method), R) <= eps
        except ValueError:
            return False

    if not ok(1e-3):
        return 0.0
    lo, hi = 1e-3, 1.0
    while ok(hi) and hi < 64:
        lo, hi = hi, 2 * hi
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return float(lo ** (1.0 / k))


# ---------------------------------------------------------------------------- Match3
def match3_balanced_M(N: int) -> int:
    """Modulus giving about half positive Match3 labels for uniform tokens: ``N^2/ln 4``."""
    return max(3, int(round(N * N / math.log(4.0))))


def match3_lambda(N: int, M: int) -> float:
    """Inverse temperature of the exact construction: ``ln(100 N^2)/(1 - cos(2 pi/M))``.

    Examples
    --------
    >>> round(match3_lambda(1, 4), 12), round(math.log(100.0), 12)  # cos(pi/2) = 0
    (4.605170185988, 4.605170185988)
    >>> round(match3_threshold(4), 12)
    0.5
    """
    return math.log(100.0 * N * N) / (1.0 - math.cos(2 * math.pi / M))


def match2_lambda(N: int, M: int) -> float:
    """The pairwise (Match2) analogue: ``ln(100 N)/(1 - cos(2 pi/M))``."""
    return math.log(100.0 * N) / (1.0 - math.cos(2 * math.pi / M))


def match3_threshold(M: int) -> float:
    """Decision threshold ``(1 + cos(2 pi/M))/2`` on the attention-weighted mean cosine."""
    return 0.5 * (1.0 + math.cos(2 * math.pi / M))


def match3_entry_bound(N: int, M: int, d: int = 4) -> float:
    """Entry bound B of the construction in the ``1/d`` convention: ``(d lam)^{1/3}``."""
    return (d * match3_lambda(N, M)) ** (1.0 / 3.0)


def _one_minus_cos(M: int) -> float:
    """``1 - cos(2 pi/M) = 2 sin^2(pi/M)`` without cancellation (large M)."""
    return 2.0 * math.sin(math.pi / M) ** 2


def match3_readout_margin(M: int) -> float:
    """Distance of the exact construction's readout from its threshold, for every token:
    ``0.49 (1 - cos(2 pi/M))`` (see the module docstring; ``lam`` of :func:`match3_lambda`)."""
    return 0.49 * _one_minus_cos(M)


# rounding steps in one logit of the construction: the angles' cos/sin (1 each), the trilinear
# form's 4 products of 3 factors and their sum (<= 12 + 4), the scale (1): 24 with room to spare
_MATCH3_LOGIT_ULPS = 24


def match3_rounding_error(N: int, M: int) -> float:
    """Bound on how far float64 moves the construction's readout: each logit off by at most
    ``delta = lam kappa u`` (kappa = 24 rounding steps, declared), so each weight by the factor
    ``e^{+-delta}`` and the normalised mean of values in [-1, 1] by ``<= 2 (e^{2 delta} - 1)``;
    plus the ``N^2``-term sums and the value products (``(N^2 + kappa) u`` each, twice)."""
    delta = math.log(100.0 * N * N) / _one_minus_cos(M) * _MATCH3_LOGIT_ULPS * UNIT_ROUNDOFF
    if delta > 300.0:
        return math.inf
    return float(2.0 * math.expm1(2.0 * delta) + 4.0 * (N * N + _MATCH3_LOGIT_ULPS) * UNIT_ROUNDOFF)


def match3_predicted_accuracy(N: int, M: int) -> float:
    """Predicted accuracy of the exact tensor-attention construction on Match3 for this (N, M):
    1 where :func:`match3_readout_margin` exceeds :func:`match3_rounding_error` (every token is
    classified correctly in float64), NaN (no prediction) where it does not."""
    return 1.0 if match3_readout_margin(M) > match3_rounding_error(N, M) else math.nan


def check_degree(g) -> int:
    """``g`` as an int; ValueError unless it is a non-negative integer."""
    if int(g) != g or g < 0:
        raise ValueError(f"the polynomial degree must be a non-negative integer, got {g!r}")
    return int(g)
