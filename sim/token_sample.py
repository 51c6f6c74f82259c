"""Monte Carlo of the uniform error of attention on n tokens (Result 1 of Bohbot et al.).

Contract
--------
For a token sample ``Y = (y_1..y_n)`` (shape ``(n, d)``) from a law ``mu`` with closed-form
limit ``Gamma_mu`` (:class:`sim.distributions.TokenDistribution`), score matrix ``A`` (d x d,
scale folded in), value matrix ``V`` (d_v x d) and radii ``R_1 < ... < R_k``::

    E_R = sup_{|x| <= R} || Gamma_{mu_n}(x) - Gamma_mu(x) ||_2 ,

    Gamma_{mu_n}(x) = sum_j softmax_j(<A x, y_j>) V y_j.

The supremum is searched, not solved: candidates are the centre, ``n_shells`` radial shells
times ``n_dirs`` quasi-uniform directions (:func:`theory.token_sample.sphere_directions`) plus
the top right-singular directions of ``Sigma^{1/2} A`` (where the error variance grows fastest,
notes token_sample §5.3) with both signs; then the ``n_refine`` worst candidates of each radius are polished
by a pattern search (steps along the coordinate axes and the radius, halving ``refine_iters``
times, projected onto the ball). Every evaluation is a lower bound of the true supremum, and
the search is deterministic given the sample, so the same tokens give the same value.
All radii share one token sample (common random numbers across R).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.attention import DEFAULT_CHUNK, softmax_attention
from sim.backend import to_numpy
from theory.token_sample import sphere_directions

__all__ = ["empirical_attention", "SupResult", "sup_errors", "search_directions"]


def empirical_attention(x, tokens, A, V=None, lam: float = 1.0, *, method="auto", chunk=DEFAULT_CHUNK,
                        precision: str = "float64"):
    """Gamma_{mu_n}(x) for queries ``x`` (q, d) over ``tokens`` (an (n, d) array, or a
    :class:`sim.attention.TokenStream` generated in the kernel); NumPy result (q, d_v)."""
    x = np.asarray(x, dtype=float)
    a = lam * x @ np.asarray(A, dtype=float).T
    if not isinstance(tokens, np.ndarray) and type(tokens).__name__ != "TokenStream":
        from sim.backend import namespace  # GPU tokens: move the small query block over

        a = namespace(tokens).asarray(a)
    out, _ = softmax_attention(a, tokens, method=method, chunk=chunk, precision=precision)
    out = to_numpy(out)
    return out if V is None else out @ np.asarray(V, dtype=float).T


@dataclass(frozen=True)
class SupResult:
    radius: np.ndarray  # (k,)
    value: np.ndarray  # (k,) the largest error found within each ball
    argmax: np.ndarray  # (k, d) where it was found
    n_evals: int  # queries evaluated in total


def search_directions(dist, A, n_dirs: int) -> np.ndarray:
    """Quasi-uniform directions plus +-(top right-singular vectors of Sigma^{1/2} A)."""
    d = dist.dim
    dirs = sphere_directions(d, n_dirs)
    cov = np.asarray(dist.law.cov, dtype=float)
    L = np.linalg.cholesky(cov + 1e-12 * np.eye(d))
    _, _, vt = np.linalg.svd(L.T @ np.asarray(A, dtype=float))
    top = vt[: min(d, 2)]
    return np.concatenate([dirs, top, -top])


def sup_errors(tokens, dist, A, V=None, radii=(1.0,), *, lam: float = 1.0, n_dirs: int = 64,
               n_shells: int = 4, n_refine: int = 6, refine_iters: int = 6,
               method: str = "auto", chunk: int = DEFAULT_CHUNK, precision: str = "float64") -> SupResult:
    """Search ``sup_{|x|<=R} |Gamma_{mu_n}(x) - Gamma_mu(x)|`` for every R in ``radii`` (``tokens``:
    an (n, d) array or a :class:`sim.attention.TokenStream`)."""
    radii = np.asarray(radii, dtype=float).ravel()
    if np.any(radii <= 0):
        raise ValueError("radii must be positive")
    if n_dirs < 1 or n_shells < 1 or n_refine < 1 or refine_iters < 0:
        raise ValueError("need n_dirs, n_shells, n_refine >= 1 and refine_iters >= 0")
    d = dist.dim
    A = np.asarray(A, dtype=float)

    def err(X):
        emp = empirical_attention(X, tokens, A, V, lam, method=method, chunk=chunk, precision=precision)
        lim = dist.limit(X, A, V, lam)
        return np.linalg.norm(emp - lim, axis=1)

    dirs = search_directions(dist, A, n_dirs)
    shells = np.arange(1, n_shells + 1) / n_shells
    unit = np.concatenate([np.zeros((1, d)), (shells[:, None, None] * dirs[None]).reshape(-1, d)])
    k, m = len(radii), len(unit)
    X = (radii[:, None, None] * unit[None]).reshape(-1, d)
    vals = err(X).reshape(k, m)
    n_evals = X.shape[0]

    # pattern search from the n_refine worst candidates of every radius
    top = np.argsort(vals, axis=1)[:, ::-1][:, :n_refine]  # (k, r)
    pts = (radii[:, None, None] * unit[top])  # (k, r, d)
    pv = np.take_along_axis(vals, top, axis=1)  # (k, r)
    moves = np.concatenate([np.eye(d), -np.eye(d)])  # axis steps
    step = radii / (2 * n_shells)
    for _ in range(refine_iters):
        r = pts.shape[1]
        prop_axis = pts[:, :, None, :] + step[:, None, None, None] * moves[None, None]
        norms = np.linalg.norm(pts, axis=2, keepdims=True)
        udir = np.where(norms > 0, pts / np.where(norms > 0, norms, 1), 0.0)
        prop_rad = np.stack([pts + step[:, None, None] * udir, pts - step[:, None, None] * udir], axis=2)
        prop = np.concatenate([prop_axis, prop_rad], axis=2)  # (k, r, p, d)
        pn = np.linalg.norm(prop, axis=3, keepdims=True)
        scale = np.minimum(1.0, radii[:, None, None, None] / np.where(pn > 0, pn, 1))
        prop = prop * scale
        p = prop.shape[2]
        pval = err(prop.reshape(-1, d)).reshape(k, r, p)
        n_evals += k * r * p
        best = np.argmax(pval, axis=2)
        bval = np.take_along_axis(pval, best[..., None], axis=2)[..., 0]
        better = bval > pv
        bpts = np.take_along_axis(prop, best[..., None, None], axis=2)[:, :, 0, :]
        pts = np.where(better[..., None], bpts, pts)
        pv = np.where(better, bval, pv)
        step = step / 2

    i_best = np.argmax(pv, axis=1)
    value = pv[np.arange(k), i_best]
    argmax = pts[np.arange(k), i_best]
    return SupResult(radius=radii, value=value, argmax=argmax, n_evals=n_evals)


# =============================================================================================
# Hardmax regime (notes token_sample §2.3, §6.8): appended section of the token-sample thread.
#
# For queries x_q (q, d), tokens Y (n, d), score matrix A and value matrix V (default I):
#   pure hardmax  Gamma^inf_{mu_n}(x) = V y_{j*},  j* = argmax_j <A x, y_j>;
#   softmax at parameter lam  Gamma^lam_{mu_n}(x) = sum_j softmax_j(lam <A x, y_j>) V y_j;
# both against the population hardmax limit Gamma^inf_mu(x) (theory.token_sample.hardmax_limit):
#   err = |Gamma_{mu_n}(x) - Gamma^inf_mu(x)|_2 and, for the sphere, the radial deficit
#   rho - <Gamma^lam_{mu_n}(x), u> with u = Gamma^inf_mu(x)/rho, an unbiased-to-O(1/n) estimator
#   of the bias rho (1 - A_d(lam kappa)). Every value is the mean over the queries.
# =============================================================================================
from sim.attention import hardmax_attention as _hardmax_attention  # noqa: E402
from theory.token_sample import hardmax_limit as _hardmax_limit  # noqa: E402

__all__ += ["HardmaxErrors", "hardmax_errors"]


@dataclass(frozen=True)
class HardmaxErrors:
    pure_err: float  # mean_q |V y_{j*} - Gamma^inf_mu(x_q)|
    lam_err: np.ndarray  # (L,) mean_q |Gamma^lam_{mu_n}(x_q) - Gamma^inf_mu(x_q)|
    lam_deficit: np.ndarray  # (L,) mean_q <u_q, Gamma^inf_mu(x_q) - Gamma^lam_{mu_n}(x_q)>


def hardmax_errors(tokens, law, A, queries, lams, V=None, *, method: str = "auto",
                   chunk: int = DEFAULT_CHUNK) -> HardmaxErrors:
    """Errors of the empirical hardmax and of softmax at every ``lams`` against the population
    hardmax limit, averaged over ``queries`` (see the section comment). ``u_q`` is the unit
    vector of Gamma^inf_mu(x_q) (radial direction for the sphere)."""
    X = np.asarray(queries, dtype=float)
    A = np.asarray(A, dtype=float)
    lams = np.atleast_1d(np.asarray(lams, dtype=float))
    target = _hardmax_limit(law, X, A, V)
    norm = np.linalg.norm(target, axis=1, keepdims=True)
    u = np.where(norm > 0, target / np.where(norm > 0, norm, 1.0), 0.0)
    a = X @ A.T
    if not isinstance(tokens, np.ndarray):
        from sim.backend import namespace

        a_dev = namespace(tokens).asarray(a)
    else:
        a_dev = a
    hard, _ = _hardmax_attention(a_dev, tokens)
    hard = to_numpy(hard)
    hard = hard if V is None else hard @ np.asarray(V, dtype=float).T
    pure = float(np.linalg.norm(hard - target, axis=1).mean())
    errs = np.empty(lams.size)
    defs = np.empty(lams.size)
    for i, lam in enumerate(lams):
        out = empirical_attention(X, tokens, A, V, float(lam), method=method, chunk=chunk)
        diff = target - out
        errs[i] = np.linalg.norm(diff, axis=1).mean()
        defs[i] = np.einsum("qi,qi->q", u, diff).mean()
    return HardmaxErrors(pure, errs, defs)
