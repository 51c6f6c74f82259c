"""Attention primitives, one module per concept (every public name is re-exported here, so
``from sim.attention import softmax_attention`` keeps working):

:mod:`sim.attention.softmax`       the foundation: streaming softmax attention of many queries
                                   over many tokens, ``softmax_attention(a, keys, values) ->
                                   (out (q, dv), lse (q,))`` with float64 online log-sum-exp
                                   (methods numba / stream / naive / cuda; ``DEFAULT_CHUNK``);
:mod:`sim.attention.self_moments`  token-sample thread, part 2: mean and population covariance
                                   of the self-attention outputs of n tokens at several softmax
                                   scales, ``self_attention_moments(X, A, V, scales)``;
:mod:`sim.attention.hardmax`       the lam -> infinity limit:
                                   ``hardmax_attention(a, keys, values) -> (out, idx)``, the
                                   value of the top-scoring key;
:mod:`sim.attention.stream`        attention over tokens generated inside the kernel from a
                                   counter-based Philox stream (``TokenStream``): n = 10^8
                                   tokens in O(block) memory, the same numbers whatever the
                                   thread count; ``softmax_attention(a, stream)`` takes it.

``precision="float32"`` (numba and stream paths): scores and weights in float32 with a
vectorised float32 exp, tile sums added into float64.

Conventions (all three): rows are samples, the last axis is the feature axis; score vectors
``a_i = lam * A x_i`` carry the query-key matrix and any softmax scale; nothing of size
q x n is materialised except by the ``"naive"`` reference methods (small inputs only).
"""
from sim.attention.softmax import DEFAULT_CHUNK, METHODS, PRECISIONS, softmax_attention
from sim.attention.self_moments import SELF_BLOCK_K, SELF_BLOCK_Q, SELF_METHODS, self_attention_moments
from sim.attention.hardmax import HARDMAX_METHODS, hardmax_attention
from sim.attention.stream import TokenStream, stream_attention

__all__ = ["softmax_attention", "METHODS", "PRECISIONS", "DEFAULT_CHUNK", "TokenStream", "stream_attention", "self_attention_moments", "SELF_METHODS",
           "SELF_BLOCK_Q", "SELF_BLOCK_K", "hardmax_attention", "HARDMAX_METHODS"]
