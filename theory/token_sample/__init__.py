r"""Token sample complexity of attention: closed forms (Bohbot, Letrouit, Peyré, Vialard 2025).

Symbols and conventions
-----------------------
* A token is ``y`` in R^d; the token law is ``mu``; a prompt is n i.i.d. tokens with empirical
  law ``mu_n``. Row-vector layout: a batch of queries ``x`` has shape ``(..., d)``.
* One attention head with bilinear score matrix ``A`` (d x d, any softmax scale or inverse
  temperature already folded in) and value matrix ``V`` (d_v x d)::

      Gamma_mu(x) = V E_mu[ y e^{<Ax, y>} ] / E_mu[ e^{<Ax, y>} ].

  With ``mu = mu_n`` this is softmax attention of query x over the n tokens (keys = tokens,
  values = V tokens). In code ``a = x @ A.T`` is the score vector of query x.
* The map only needs the *exponential tilt* of the law: with ``logZ(a) = log E e^{<a,y>}``,
  ``Gamma_mu(x) = V grad logZ(a)`` = V x (mean of the tilted law ``mu_a ∝ e^{<a,y>} mu``).
  Each token law below exposes ``log_partition(a)``, ``tilted_mean(a)`` and ``tilted_cov(a)``
  (the latter is the Hessian of logZ), vectorised over leading axes of ``a``.

Delta method (notes token_sample §2.1, [D]): with ``w = e^{<a,y>}``, ``Z = E w`` and
``gamma = tilted_mean(a)``, ::

    sqrt(n) (Gamma_{mu_n}(x) - Gamma_mu(x))  ->  N(0, V M(x) V^T),
    M(x) = E[w^2 (y-gamma)(y-gamma)^T] / Z^2
         = exp(logZ(2a) - 2 logZ(a)) * [ Cov_{2a} + (m_{2a}-gamma)(m_{2a}-gamma)^T ],

since ``w^2 mu / E w^2`` is the tilt by 2a. The prefactor ``n*(x) = E w^2 / (E w)^2`` is the
effective-sample threshold: below it a few extreme tokens dominate (a saturating, hardmax-like
regime). Heavy-tailed weights need more: the normal approximation of the weights' average is
accurate only once ``n >> n_3(x) = (E w^3)^2 / (E w^2)^3`` (the Berry-Esseen scale), which for
Gaussian tokens is ``n*^3`` — the reason the 1/sqrt(n) rate appears so late at moderate R. For
Gaussian tokens (notes token_sample §3.1) ::

    Gamma_mu(x) = V (m + Sigma A x),     M(x) = e^{|Sigma^{1/2} A x|^2} (Sigma + Sigma A x x^T A^T Sigma),

so ``log C(R) ~ 1/2 ||Sigma^{1/2} A||^2 R^2`` (quadratic in R). For the uniform sphere of radius
rho (notes token_sample §3.2) ``Gamma_mu(x) = V rho A_d(kappa) a/|a|`` with ``kappa = rho |a|`` and
``A_d = I_{d/2}/I_{d/2-1}`` (computed with exponentially scaled Bessel functions), and
``n*`` grows only polynomially in kappa. The uniform ball of R^d is the sphere formula with
d -> d + 2 (Archimedes' projection). Truncated Gaussians here are *box*-truncated
(each coordinate of N(0, sigma^2 I) restricted to [-c sigma, c sigma]), which factorises
into closed-form one-dimensional truncated-normal tilts.

Horizon (notes token_sample §1.3, [C]): ``H = ||Sigma^{1/2} A Sigma^{1/2}||_2`` (two-sided, the authors'
current definition) or ``||Sigma^{1/2} A||_2`` (one-sided, older plots). The authors compute it
from ``A = W_k^T W_q`` *without* the softmax scale (``H_code``); with the exact exponent matrix
it is ``H_eff``. Pass whichever ``A`` you mean and record the convention. The moment-rate
exponent overlaid by the authors is ``beta(H) = 1/(2(1+H^2))`` ([C+G]).

Everything here is a deterministic function of its parameters (numpy/scipy/sympy only).

The package splits along the paper's results: :mod:`.laws` (token laws), :mod:`.uniform`
(Result 1), :mod:`.limit_process` (Result 1's constant: the Gaussian limit process G of the error,
its covariance K and E sup|G|), :mod:`.saturation` (Result 1 below n*: the pre-asymptotic curve
of Gaussian tokens), :mod:`.moments` (Result 2), :mod:`.hardmax` (Result 3), :mod:`.encoder` (Result 2
on a finite sequence of real tokens) and :mod:`.derivations` (sympy). Everything public is re-exported here, so ``from theory import token_sample as ts``
sees one namespace.
"""
from .laws import *  # noqa: F401,F403
from .laws import __all__ as _laws_all
from .uniform import *  # noqa: F401,F403
from .uniform import __all__ as _uniform_all
from .limit_process import *  # noqa: F401,F403
from .limit_process import __all__ as _limit_all
from .saturation import *  # noqa: F401,F403
from .saturation import __all__ as _saturation_all
from .moments import *  # noqa: F401,F403
from .moments import __all__ as _moments_all
from .hardmax import *  # noqa: F401,F403
from .hardmax import __all__ as _hardmax_all
from .derivations import derive_gaussian_tilt
from .encoder import *  # noqa: F401,F403
from .encoder import __all__ as _encoder_all

__all__ = [*_laws_all, *_uniform_all, *_limit_all, *_saturation_all, *_moments_all, *_hardmax_all, *_encoder_all, "derive_gaussian_tilt"]
