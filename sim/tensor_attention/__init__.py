r"""Exact and near-linear bounded-entry matrix, tensor and k-th order attention; FAVOR+; Match3.

Contract
--------
Inputs are row-major ``(n, d)`` arrays (rows are tokens): a query matrix ``Q`` (``nq x d``), key
matrices ``K_1..K_{k-1}`` (``n_m x d``) and value matrices ``V_1..V_{k-1}`` (``n_m x dv``, the
same ``dv`` for all). With softmax scale ``s`` (default ``1/d``, the convention of Alman & Song
[AS23, AS24]; pass ``scale=`` for others, e.g. ``1/sqrt(d)`` of the 2-simplicial papers), the
order-k attention of query ``i`` is::

    logit(i, j_1..j_{k-1}) = s * sum_l Q[i,l] K_1[j_1,l] ... K_{k-1}[j_{k-1},l]
    T[i, :] = sum_J softmax_J(logit(i, J)) * V_1[j_1, :] o ... o V_{k-1}[j_{k-1}, :]

where ``o`` is the entrywise product and **the softmax is joint over all** ``n_1 ... n_{k-1}``
index tuples ``J``. k = 2 is matrix attention ``D^{-1} exp(s Q K^T) V``; k = 3 is tensor attention
``D^{-1} exp(s Q (K_1 ⊘ K_2)^T) (V_1 ⊘ V_2)`` with ``⊘`` the column-wise Kronecker (Khatri–Rao)
product (notes tensor_attention §1). The order of the ``n^2`` Khatri–Rao rows never matters (tested); this module
uses numpy's order, row ``j_1 n_2 + j_2`` (second index fastest); :func:`khatri_rao` also gives
the paper's order (first index fastest).

Exact implementations (``method=``), all float64, all agreeing to ~1e-13 (tests/sim):

``"numba"``  k = 3: a fused CPU kernel, parallel over queries; for each (i, j_1) the scores over
             all j_2 are streamed through an online softmax (running reference score, rescale on
             overflow), so memory is O(n) per thread and no ``n x n^2`` array exists. k = 2 is the
             foundation's :func:`sim.attention.softmax_attention`.
``"stream"`` any k, array-namespace code (NumPy or CuPy): blocks of queries times chunks of the
             flattened prefix tuples ``(j_1..j_{k-2})``, scores against ``K_{k-1}`` by one GEMM,
             joint online softmax with float64 accumulators; memory O(budget).
``"naive"``  materialise the flattened Khatri–Rao keys/values and call the foundation's naive
             softmax (small inputs only): the ``D^{-1} A V`` form of notes tensor_attention §1.
``"loop"``   pure-Python loops over (i, J): the obviously-correct oracle
             (tiny inputs only).
``"cuda"``   k = 2, 3 on a CUDA device: the numba-cuda kernels of :mod:`gpu.tensor_attention`
             (k = 3: pairs (j_1, j_2) flattened across threads, online softmax per thread, block
             and slice merges; k = 2: :mod:`gpu.attention`), for device (CuPy) arrays or, under
             the CUDA simulator, NumPy arrays; ``d, dv <= MAX_DIM`` of the kernel's module.
             ``"auto"`` picks it for device arrays (k <= 3, dimensions that fit), else
             ``"numba"`` for NumPy and ``"stream"`` for other namespaces.

Polynomial method (AS23/AS24, notes tensor_attention §2): with ``P(x) = sum_{t<=g} c_t x^t`` (Taylor or Chebyshev,
:mod:`theory.tensor_attention`) and multi-indices ``alpha`` (``|alpha| <= g``, ``r = C(d+g, g)``),
the monomial feature maps::

    U_1[i, alpha] = w_alpha Q[i]^alpha,   U_{m+1}[j, alpha] = K_m[j]^alpha,
    w_alpha = c_|alpha| s^|alpha| |alpha|!/alpha!

satisfy ``U_1 (U_2 ⊘ ... ⊘ U_k)^T = P(logits)`` exactly, and the tensor trick
``(U_2 ⊘ U_3)^T (V_1 ⊘ V_2) = (U_2^T V_1) o (U_3^T V_2)`` gives::

    S = o_m (U_{m+1}^T V_m)   (r x dv),   z = o_m (U_{m+1}^T 1)   (r),   T ~ (U_1 S) / (U_1 z)

in O(n r d) time and O(chunk r) memory (rows streamed in chunks; :func:`polynomial_attention`;
``engine="cuda"``, the default for device arrays, builds the features with a numba-cuda kernel
and does the products with cuBLAS: :func:`gpu.tensor_attention.polynomial_num_den`).
The features are built level by level from a parent pointer (``alpha = parent + e_var``), one
gather and one multiply per level. Guarantee: if the approximation has relative error ``eps < 1``
on the realised logit range, ``||T - T*||_inf <= 2 eps/(1-eps) prod_m ||V_m||_inf``.

Positivity safeguards: the realised logit range is bounded cheaply by
``|s| sum_l max_i|Q_il| prod_m max_j|K_m,jl|`` (exact ``max |logit|`` would cost O(n^k d)). If that
bound exceeds the design range (from ``B`` or ``R``) the call raises :class:`LogitRangeError`,
unless the polynomial is positive on all of R (even-degree Taylor), in which case it proceeds and
reports ``certified=False``. Any non-positive normaliser raises :class:`NonPositiveNormalizer`.

Baselines: FAVOR+ positive random features for the matrix case (Choromanski et al. 2021;
``E[phi(q) . phi(k)] = exp(s q.k)`` with ``phi(x) = m^{-1/2} exp(W x' - |x'|^2/2)``,
``x' = sqrt(s) x``, W Gaussian or block-orthogonal with chi-distributed row norms), so its error
decays like ``m^{-1/2}`` only.

Match3 (notes tensor_attention §5.1, SHT23 [C]): labels by a histogram oracle and by brute force; the exact
tensor-attention construction with ``d = 4`` (``cos`` of the triple sum as a trilinear form) and
the pairwise baselines (the Match2 construction; random pairwise heads with a trained readout).

Layout: the package splits along these seams -- :mod:`._common` (checks, scale, Khatri-Rao),
:mod:`.exact` (exact engines), :mod:`.polynomial` (the polynomial method), :mod:`.favor`
(FAVOR+), :mod:`.inputs` (input generators) and :mod:`.match3` (Match3/Match2). Everything
public is re-exported here, so ``from sim import tensor_attention as sta`` sees one namespace.
Module-level tuning constants (``_STREAM_BUDGET``, ``_POLY_BLOCK``, ...) live in the submodule
that reads them: patch them there.
"""
from __future__ import annotations

from ._common import khatri_rao
from .exact import *  # noqa: F401,F403
from .exact import __all__ as _exact_all
from .polynomial import *  # noqa: F401,F403
from .polynomial import __all__ as _poly_all
from .polynomial import _poly_numba  # noqa: F401  (the CPU twin the GPU tests compare against)
from .favor import *  # noqa: F401,F403
from .favor import __all__ as _favor_all
from .inputs import *  # noqa: F401,F403
from .inputs import __all__ as _inputs_all
from .match3 import *  # noqa: F401,F403
from .match3 import __all__ as _match3_all

__all__ = ["khatri_rao", *_exact_all, *_poly_all, *_favor_all, *_inputs_all, *_match3_all]
