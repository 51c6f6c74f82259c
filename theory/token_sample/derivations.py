"""Symbolic derivations (sympy) behind the closed forms of the token-sample thread."""
from __future__ import annotations

__all__ = [
    "derive_gaussian_tilt",
]



# ------------------------------------------------------------------------ sympy derivation
def derive_gaussian_tilt(d: int = 2) -> dict:
    """Symbolic derivation of the Gaussian tilt (notes token_sample §3.1).

    Returns sympy objects:

    * ``square_identity``: ``a.y - (y-m)^T S^{-1}(y-m)/2 - [-(y-c)^T S^{-1}(y-c)/2 + a.m + a^T S a/2]``
      with ``c = m + S a``, which simplifies to 0: the tilted density is N(m + S a, S) and
      ``log E e^{a.y} = a.m + a^T S a / 2``;
    * ``log_partition``: ``a.m + a^T S a / 2`` (symbolic, general symmetric S);
    * ``gradient``: its gradient in ``a`` — the attention limit before V is applied;
    * ``mgf_1d``: ``log E e^{a y}`` for y ~ N(m, s^2), obtained by direct integration.
    """
    import sympy as sp

    a = sp.Matrix(sp.symbols(f"a0:{d}", real=True))
    y = sp.Matrix(sp.symbols(f"y0:{d}", real=True))
    m = sp.Matrix(sp.symbols(f"m0:{d}", real=True))
    S = sp.Matrix(d, d, lambda i, j: sp.Symbol(f"s{min(i, j)}{max(i, j)}", real=True))
    Sinv = S.inv()
    c = m + S * a
    lhs = (a.T * y)[0] - sp.Rational(1, 2) * ((y - m).T * Sinv * (y - m))[0]
    logZ = (a.T * m)[0] + sp.Rational(1, 2) * (a.T * S * a)[0]
    rhs = -sp.Rational(1, 2) * ((y - c).T * Sinv * (y - c))[0] + logZ
    identity = sp.simplify(sp.together(sp.expand(lhs - rhs)))
    grad = sp.Matrix([sp.diff(logZ, ai) for ai in a])

    t, mu1 = sp.symbols("t mu", real=True)
    s1 = sp.Symbol("sigma", positive=True)
    a1 = sp.Symbol("alpha", real=True)
    dens = sp.exp(-(t - mu1) ** 2 / (2 * s1**2)) / sp.sqrt(2 * sp.pi * s1**2)
    mgf = sp.simplify(sp.integrate(sp.exp(a1 * t) * dens, (t, -sp.oo, sp.oo), conds="none"))
    return {
        "square_identity": identity,
        "log_partition": logZ,
        "gradient": grad,
        "symbols": {"a": a, "m": m, "S": S},
        "mgf_1d": sp.simplify(sp.log(mgf)),
        "symbols_1d": {"alpha": a1, "mu": mu1, "sigma": s1},
    }
