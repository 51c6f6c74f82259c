r"""Attention over m of n keys: selection policies, one estimator, streamed diagnostics.

Contract
--------
Symbols (as in :mod:`theory.token_selection`): queries are given by their score vectors
``a_i = A x_i`` (shape (q, d), any softmax scale folded in); keys ``y_j`` (n, d), values
``v_j`` (n, dv); scores ``s_ij = <a_i, y_j>``, weights ``p_ij = softmax_j(s_i)``, output
``ybar_i = sum_j p_ij v_j``, computed by a streaming log-sum-exp with float64 accumulators.
Rows are samples, the last axis is the feature axis; inside the kernels blocks of keys are
feature-major (d, L) so loops over keys vectorise.

One interface. A *policy* (:mod:`.policies`) maps a group of queries to a :class:`Selection`:
indices ``idx`` (Qs, Rs, M), log inclusion weights ``logw`` and a count per (query, rep)
(Qs = 1 for selections shared by all queries, Rs = 1 for deterministic ones). *One estimator*
consumes any selection::

    yhat = sum_k w_k e^{s_{J_k}} v_{J_k} / sum_k w_k e^{s_{J_k}}       (max-shifted, float64)

and reports, per (query, rep): ``err2 = ||yhat - ybar||^2`` (value space), ``zratio =
sum_k w_k e^{s_k} / sum_j e^{s_j}`` (the normaliser estimate over the truth), ``nerr2 =
||sum_k w_k e^{s_k} v_k / sum_j e^{s_j} - ybar||^2`` and ``tau`` = the attention mass of the keys
NOT selected (distinct keys). Policies: uniform with and without replacement, importance
sampling from p and from the optimal proposal ∝ p ||v - ybar||, exact top-k, proxy top-k (the
pooled mean softmax of W window queries: SnapKV, Token Sparse Attention), the hybrid top-k1 +
b uniform tail draws, Token Sparse Attention's coverage rule (exact or proxy scores, both the
"reach" convention of its code and the "stay below" one) and vAttention's CLT budget rule
(denominator or numerator statistic, one- or two-sided quantile). :mod:`.controls` holds the
negative controls (top-k of the wrong end, a uniform sampler skipping a block, the Gaussian
tail law on sphere tokens).

Sources (:mod:`.sources`): an in-memory array, or a :class:`sim.attention.TokenStream` whose keys
are generated block by block for the passes and one by one (:func:`.kernels.stream_token`, the
stream's documented Philox layout) for the estimator, so a policy's error at n = 2^20 costs
O(budget + block) memory per query.

Passes (:mod:`.context`): the moments pass (lse, ybar, kappa_n = n sum p^2, score mean/std/min/
max) always; diagnostics (Var_p, B_n = n sum p^2 ||v - ybar||^2, G_n = sum p ||v - ybar||), top-K
(a 2K buffer per row, compacted by sorting), coverage (a 4096-bin mass histogram per row, then
the keys of the bin where the cumulative share crosses tau_cov, then the kept keys), residual
sums (vAttention) and the inverse-CDF pass of importance sampling, on demand.

Given-token sums (:mod:`.sums`): :func:`tail_sums` accumulates, in one pass over the blocks,
the weighted power sums of the keys outside each query's nested top sets that
``theory.token_selection.coefficients_from_sums`` turns into the sampling and hybrid predictions
for the run's own keys; :func:`gather` fetches the keys of an index array from any source.

Driver: :func:`selection_errors(a, tokens, policies, reps=, seed=) <selection_errors>` returns
per-policy arrays (P, q, reps) and per-query diagnostics (lse, ybar, kappa, Var_p, B_n, G_n,
score mean and std) in a :class:`SelectionResult`; queries are processed in groups that fit a
memory budget. Randomness: ``seed`` is a SeedSequence (or int / Generator); policy ``name``
draws from ``SeedSequence(seed.entropy, spawn_key=seed.spawn_key + (crc32(name),))`` through
Philox counters (t // 4, global query index, rep, SELECT_WORD): the numbers depend on neither
grouping, threads nor the other policies. CPU only (no GPU twin yet).

No NaN or inf leaves: a non-finite moment, weight or estimate raises with a message.
"""
from sim.token_selection.context import (
                                        DEFAULT_BLOCK,
                                        HIST_BINS,
                                        SelectionContext,
                                        pool_scores,
)
from sim.token_selection.controls import (
                                        TopKWrongEnd,
                                        UniformSkipBlock,
                                        gaussian_tail_mass_on_sphere,
)
from sim.token_selection.engine import (
                                        DEFAULT_MEMORY,
                                        SelectionResult,
                                        as_seed,
                                        estimate,
                                        policy_key,
                                        select,
                                        selection_errors,
)
from sim.token_selection.policies import (
                                        QUANTILES,
                                        Coverage,
                                        Hybrid,
                                        Importance,
                                        ProxyTopK,
                                        Selection,
                                        TopK,
                                        Uniform,
                                        VAttention,
                                        vattention_quantile,
)
from sim.token_selection.sources import ArraySource, StreamSource, as_source
from sim.token_selection.sums import TailSums, gather, tail_sums

__all__ = [
                                        "DEFAULT_BLOCK",
                                        "DEFAULT_MEMORY",
                                        "HIST_BINS",
                                        "QUANTILES",
                                        "ArraySource",
                                        "Coverage",
                                        "Hybrid",
                                        "Importance",
                                        "ProxyTopK",
                                        "Selection",
                                        "SelectionContext",
                                        "SelectionResult",
                                        "StreamSource",
                                        "TailSums",
                                        "TopK",
                                        "TopKWrongEnd",
                                        "Uniform",
                                        "UniformSkipBlock",
                                        "VAttention",
                                        "as_seed",
                                        "as_source",
                                        "estimate",
                                        "gather",
                                        "gaussian_tail_mass_on_sphere",
                                        "policy_key",
                                        "pool_scores",
                                        "select",
                                        "selection_errors",
                                        "tail_sums",
                                        "vattention_quantile",
]
