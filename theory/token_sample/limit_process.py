r"""The Gaussian limit process of Result 1 and the expected supremum of its norm (notes §2.5).

Contract
--------
Query points ``X`` have shape ``(m, d)`` (rows), values live in R^{d_v} (``V`` is d_v x d, the
identity when omitted), scores are ``a = lam A x``. In the CLT regime the error of attention
on n i.i.d. tokens is an average of i.i.d. influence functions, ::

    sqrt(n) (Gamma_{mu_n}(x) - Gamma_mu(x)) = n^{-1/2} sum_j IF_x(Y_j) + o_P(1),
    IF_x(y) = w_x(y) (V y - Gamma_mu(x)) / Z(a_x),      w_x(y) = e^{<a_x, y>},

jointly over the query ball, so it tends to a centred Gaussian process G with covariance ::

    K(x, x') = E[IF_x(Y) IF_{x'}(Y)^T]
             = e^{logZ(b) - logZ(a) - logZ(a')} [ V Sigma_b V^T + (V gamma_b - Gamma(x)) (V gamma_b - Gamma(x'))^T ],

with ``b = a + a'``: the product of two weights is the weight of the summed score, so every
expectation is one of the law's exponential tilt (``log_partition``, ``tilted_mean``,
``tilted_cov``: Gaussian, mixture, sphere, ball, box-truncated and atom laws alike). On the
diagonal K(x, x) = V M(x) V^T, the delta-method covariance (:func:`~.uniform.fluctuation`).
For Gaussian tokens N(m, Sigma), K(x, x') = e^{<Sigma a, a'>} V (Sigma + Sigma a' a^T Sigma) V^T
(:func:`gaussian_influence_covariance`).

The constant of the uniform rate is ``C(R) = lim sqrt(n) E sup_{|x|<=R} |Gamma_{mu_n} - Gamma_mu|
= E sup_{|x|<=R} |G(x)|``. It has no closed form; :func:`expected_sup_norm` samples G on a grid
of the ball (a Monte Carlo of the limit object itself: no tokens, an explicit seed, its own
standard error) and measures the grid's discretisation error by refining it:

* the grids (:func:`ball_grid`) are shells times quasi-uniform directions, with as many points
  per unit area on every shell (plus the centre and +-the top right-singular directions of
  Sigma^{1/2} A, where the variance grows fastest); each level has about twice the points of
  the one before;
* G is sampled once on the union of the levels, so the levels' expected suprema are paired
  and their differences have small standard errors. Each level's value is a lower bound of
  the continuous supremum. For a smooth process the sup over a grid of spacing h misses the
  continuous one by O(h^2) = O(N^{-2/d}) (the maximum is quadratic around its peak), so with
  the ratio r = (N_prev / N_finest)^{2/d} of the last two levels the error left at the finest
  is about gap x r / (1 - r) (Richardson), gap = E sup(finest) - E sup(previous): this is the
  declared discretisation error (in d = 2 with N doubling, r = 1/2 and it equals the gap;
  the tests check the geometric decay of the gaps);
* the process is sampled as ``s(x) G~(x)`` with ``s(x) = sqrt(n*(x))`` (n* = E w^2/(E w)^2,
  kept in log space) and ``G~`` of bounded covariance, factorised by a pivoted Cholesky
  decomposition that stops when the largest residual variance is below ``1e-9`` of the
  largest variance (the kernel is smooth, so the rank is small).

Everything here is a deterministic function of its arguments and ``seed``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special

from .laws import _outer
from .uniform import _ball_search_dirs, _scores, sphere_directions

__all__ = [
    "influence_covariance",
    "gaussian_influence_covariance",
    "ball_grid",
    "SupLimit",
    "sample_limit_process",
    "expected_sup_norm",
    "SUP_LEVELS",
]

SUP_LEVELS = (100, 200, 400, 800)  # grid sizes of the refinement (about twice the points per level)
_PIVOT_TOL = 1e-9  # pivoted Cholesky stops below this residual variance (relative to the largest)
_MAX_RANK = 2000
_BATCH = 1000


def _v(V, dim):
    return np.eye(dim) if V is None else np.asarray(V, dtype=float)


def _tilt_parts(law, a, V):
    """log Z(a), Gamma = V gamma(a) and the log scale log s = (log Z(2a) - 2 log Z(a)) / 2."""
    logZ = law.log_partition(a)
    gam = law.tilted_mean(a) @ V.T
    log_s = 0.5 * (law.log_partition(2 * a) - 2 * logZ)
    return logZ, gam, log_s


def _kernel_block(law, a, ai, logZ, gam, log_s, i_logZ, i_gam, i_log_s, V):
    """K~(x_k, x_i) for every k (the covariance of G at x_k and x_i divided by s_k s_i), (m, dv, dv)."""
    b = a + ai
    lz = law.log_partition(b)
    gb = law.tilted_mean(b) @ V.T
    cov = V @ law.tilted_cov(b) @ V.T
    pref = np.exp(lz - logZ - i_logZ - log_s - i_log_s)
    return pref[:, None, None] * (cov + (gb - gam)[:, :, None] * (gb - i_gam)[:, None, :])


def influence_covariance(law, X, Y=None, A=None, V=None, lam: float = 1.0):
    """K(x, y) = E[IF_x IF_y^T] for every pair of rows of ``X`` (m, d) and ``Y`` (k, d; default
    ``X``): shape (m, k, dv, dv) (module docstring; notes §2.5)."""
    X = np.atleast_2d(np.asarray(X, dtype=float))
    Y = X if Y is None else np.atleast_2d(np.asarray(Y, dtype=float))
    V = _v(V, law.dim)
    ax, ay = _scores(X, A, lam), _scores(Y, A, lam)
    lx, gx = law.log_partition(ax), law.tilted_mean(ax) @ V.T
    ly, gy = law.log_partition(ay), law.tilted_mean(ay) @ V.T
    b = ax[:, None, :] + ay[None, :, :]
    lb = law.log_partition(b)
    gb = law.tilted_mean(b) @ V.T
    cov = V @ law.tilted_cov(b) @ V.T
    pref = np.exp(lb - lx[:, None] - ly[None, :])
    return pref[..., None, None] * (cov + (gb - gx[:, None, :])[..., :, None] * (gb - gy[None, :, :])[..., None, :])


def gaussian_influence_covariance(X, Y, Sigma, A, V=None):
    """The Gaussian closed form e^{<Sigma a, a'>} V (Sigma + Sigma a' a^T Sigma) V^T, a = A x,
    a' = A y: shape (m, k, dv, dv)."""
    X = np.atleast_2d(np.asarray(X, dtype=float))
    Y = np.atleast_2d(np.asarray(Y, dtype=float))
    Sigma = np.asarray(Sigma, dtype=float)
    Sa, Sb = X @ np.asarray(A).T @ Sigma, Y @ np.asarray(A).T @ Sigma
    ab = np.einsum("mi,ij,kj->mk", X @ np.asarray(A).T, Sigma, Y @ np.asarray(A).T)
    inner = Sigma + Sb[None, :, :, None] * Sa[:, None, None, :]
    if V is not None:
        V = np.asarray(V, dtype=float)
        inner = V @ inner @ V.T
    return np.exp(ab)[..., None, None] * inner


# ------------------------------------------------------------------------------ grids
def _shell_counts(d: int, shells: int, density: float) -> list[int]:
    """Directions per shell k = 1..shells: the area of the shell times ``density``."""
    area = 2 * np.pi ** (d / 2) / special.gamma(d / 2)
    return [max(2 if d > 1 else 1, int(round(density * area * k ** (d - 1)))) for k in range(1, shells + 1)]


def ball_grid(d: int, R: float, n_points: int, extra_dirs=None) -> np.ndarray:
    """About ``n_points`` points of the ball ``|x| <= R`` in R^d: the centre and ``S`` equally
    spaced shells, shell k carrying directions (:func:`~.uniform.sphere_directions`) in number
    proportional to its area, so the spacing is about R/S along and across shells; plus
    +-``extra_dirs`` on every shell. Shape (N, d)."""
    if d < 1 or R <= 0 or n_points < 2:
        raise ValueError("need d >= 1, R > 0 and n_points >= 2")
    area = 2 * np.pi ** (d / 2) / special.gamma(d / 2)
    shells = max(1, int(round((d * (n_points - 1) / area) ** (1.0 / d))))
    total = sum(_shell_counts(d, shells, 1.0))
    counts = _shell_counts(d, shells, (n_points - 1) / total)
    pts = [np.zeros((1, d))]
    extra = None
    if extra_dirs is not None and len(extra_dirs):
        e = np.asarray(extra_dirs, dtype=float).reshape(-1, d)
        e = e / np.linalg.norm(e, axis=1, keepdims=True)
        extra = np.concatenate([e, -e])
    for k, m in enumerate(counts, start=1):
        dirs = sphere_directions(d, m)
        if d == 2:  # stagger the angles of alternate shells
            t = 2 * np.pi * (np.arange(m) + 0.5 * (k % 2)) / m
            dirs = np.stack([np.cos(t), np.sin(t)], axis=1)
        if extra is not None:
            dirs = np.concatenate([dirs, extra])
        pts.append(R * k / shells * dirs)
    return np.concatenate(pts)


# ------------------------------------------------------------------------ sampling G
def _pivoted_cholesky(law, X, A, V, lam, tol=_PIVOT_TOL, max_rank=_MAX_RANK):
    """A factor L (N, r), N = m dv, with L L^T = K~ (the normalised covariance of G on X) up
    to a largest residual variance ``tol`` x the largest variance; also the log scales (m,) and
    the largest residual variance relative to the largest variance."""
    V = _v(V, law.dim)
    a = _scores(X, A, lam)
    logZ, gam, log_s = _tilt_parts(law, a, V)
    m, dv = X.shape[0], V.shape[0]
    N = m * dv
    diag = np.empty(N)
    for i0 in range(0, m, 256):  # diagonal blocks K~(x_i, x_i)
        sl = slice(i0, min(m, i0 + 256))
        b = 2 * a[sl]
        cov = V @ law.tilted_cov(b) @ V.T
        sh = law.tilted_mean(b) @ V.T - gam[sl]
        blk = np.exp(law.log_partition(b) - 2 * logZ[sl] - 2 * log_s[sl])[:, None, None] * (cov + _outer(sh))
        diag[i0 * dv:sl.stop * dv] = np.einsum("kii->ki", blk).reshape(-1)
    top = float(diag.max())
    L = np.zeros((N, min(max_rank, N)))
    cache: dict[int, np.ndarray] = {}
    r = 0
    while r < L.shape[1]:
        p = int(np.argmax(diag))
        if diag[p] <= tol * top:
            break
        i, c = divmod(p, dv)
        if i not in cache:
            blk = _kernel_block(law, a, a[i], logZ, gam, log_s, logZ[i], gam[i], log_s[i], V)
            cache[i] = blk.reshape(N, dv)  # column c' of K~ at (x_i, c') for every (x_k, c)
        col = cache[i][:, c] - L[:, :r] @ L[p, :r]
        L[:, r] = col / np.sqrt(diag[p])
        diag -= L[:, r] ** 2
        diag[p] = 0.0
        r += 1
    return L[:, :r], log_s, float(max(diag.max(), 0.0) / top)


def sample_limit_process(law, X, A, V=None, lam: float = 1.0, *, seed, n_samples: int = 1000):
    """``n_samples`` draws of G on the queries ``X`` (m, d): shape (n_samples, m, dv) (G itself,
    not normalised: mind overflow where n*(x) is astronomically large)."""
    X = np.atleast_2d(np.asarray(X, dtype=float))
    L, log_s, _ = _pivoted_cholesky(law, X, A, V, lam)
    dv = L.shape[0] // X.shape[0]
    z = np.random.default_rng(seed).standard_normal((L.shape[1], n_samples))
    g = (L @ z).T.reshape(n_samples, X.shape[0], dv)
    return g * np.exp(log_s)[None, :, None]


@dataclass(frozen=True)
class SupLimit:
    """``E sup_{|x|<=R} |G(x)|`` by Monte Carlo of G on refined grids of the ball (notes §2.5)."""

    value: float  # E sup over the finest grid (a lower bound of the continuous one, up to the MC error)
    se: float  # its Monte Carlo standard error
    discretisation: float  # declared grid error of the finest level: gap x r / (1 - r) (module docstring)
    discretisation_se: float  # Monte Carlo standard error of it (paired samples)
    points: tuple  # grid sizes of the levels
    level_values: tuple  # E sup over each level (same samples)
    rank: int  # rank of the factor of the covariance
    residual: float  # its largest residual variance, relative to the largest variance
    n_samples: int
    seed: object

    def describe(self) -> str:
        levels = ", ".join(f"{p}: {v:.4g}" for p, v in zip(self.points, self.level_values))
        return (f"E sup|G| = {self.value:.4g} ± {self.se:.2g} ({self.n_samples} draws of G); "
                f"grid refinement {levels}; discretisation {self.discretisation:.2g} ± {self.discretisation_se:.1g}")


def expected_sup_norm(law, R: float, A, V=None, lam: float = 1.0, *, seed, n_samples: int = 4000,
                      levels=SUP_LEVELS) -> SupLimit:
    """``E sup_{|x| <= R} |G(x)|`` for the limit process G of ``law``, ``A``, ``V``, ``lam``: G sampled
    ``n_samples`` times (``seed``: anything :func:`numpy.random.default_rng` takes) on the union of the grids ``ball_grid(d, R, N)`` for N in
    ``levels`` (module docstring). The value is the finest level's; ``discretisation`` is the
    error its grid leaves, extrapolated from its gap to the level before."""
    d = law.dim
    extra = _ball_search_dirs(law, A, lam)
    grids = [ball_grid(d, R, int(N), extra) for N in levels]
    X = np.concatenate(grids)
    idx = np.cumsum([0] + [g.shape[0] for g in grids])
    L, log_s, resid = _pivoted_cholesky(law, X, A, V, lam)
    dv = L.shape[0] // X.shape[0]
    scale = np.exp(log_s - log_s.max())
    rng = np.random.default_rng(seed)
    sups = np.empty((len(grids), n_samples))
    for s0 in range(0, n_samples, _BATCH):
        k = min(_BATCH, n_samples - s0)
        g = (L @ rng.standard_normal((L.shape[1], k))).reshape(X.shape[0], dv, k)
        norm = np.sqrt(np.einsum("mck,mck->mk", g, g)) * scale[:, None]
        for j in range(len(grids)):
            sups[j, s0:s0 + k] = norm[idx[j]:idx[j + 1]].max(axis=0)
    unit = float(np.exp(log_s.max()))
    means = sups.mean(axis=1) * unit
    ses = sups.std(axis=1, ddof=1) / np.sqrt(n_samples) * unit
    if len(grids) > 1:
        r = (grids[-2].shape[0] / grids[-1].shape[0]) ** (2.0 / d)
        diff = (sups[-1] - sups[-2]) * unit * r / (1 - r)
    else:
        diff = np.full(n_samples, np.inf)
    return SupLimit(value=float(means[-1]), se=float(ses[-1]), discretisation=float(diff.mean()),
                    discretisation_se=float(diff.std(ddof=1) / np.sqrt(n_samples)),
                    points=tuple(int(g.shape[0]) for g in grids), level_values=tuple(float(v) for v in means),
                    rank=int(L.shape[1]), residual=resid, n_samples=int(n_samples), seed=seed)
