"""In-context linear regression with one layer of multi-head softmax attention: data, model,
hand-written gradients, batched Adam training, pattern metrics and Monte Carlo of the
closed-form predictors (He, Pan, Chen, Yang, "In-context linear regression demystified",
ICML 2025; notes icl_regression §1-4, §6-9, §12).

Data (notes icl_regression §1) [C]
----------------------------------
A prompt has ``L`` examples ``(x_i, y_i)`` and a query ``(x_q, y_q)``; ``d`` covariates and
``N`` outputs (``N = 1`` except in the multi-task variant)::

    x_i, x_q = C g,  g ~ N(0, I_d)              C = chol(Sigma) (Sigma = I: isotropic)
    beta_n   = s_n (m_n ⊙ g_beta),  g_beta ~ N(0, I_d)   (s_n = 1/sqrt(d), m_n = 1: beta ~ N(0, I/d))
    y_{n,i}  = beta_nᵀ x_i + sigma_n e_{n,i},   y_{q,n} = beta_nᵀ x_q + sigma_{q,n} e_{q,n}

Tokens ``z_i = [x_i; y_{1,i}..y_{N,i}]`` (``D = d + N``), query token ``z_q = [x_q; 0]``. The
query label carries noise by default (the authors' code), so MSE includes ``sigma^2``. A
:class:`TaskSpec` holds ``C, s, m, sigma, sigma_q``; :func:`isotropic_task`,
:func:`toeplitz_task` (``Sigma_ij = rho^|i-j|``, notes icl_regression §8) and :func:`multitask_task` (notes icl_regression §1:
d = 6, tasks on x[0:4] and x[2:6], beta_n ~ N(0, I_4), noise variance 0.4, noiseless query)
build the three families.

Model (notes icl_regression §2) [C]
-----------------------------------
Per head ``h = 1..H``: ``Q_h, K_h, V_h`` (D x D) and a readout ``O_h`` (D x N); no residual,
LayerNorm, MLP or bias; the query does not attend to itself. With temperature ``c = 1/sqrt(D)``
(= 1/sqrt(d+1) for one output) and the merged parameters ::

    W_h = c Q_hᵀ K_h   (rows index query entries, columns key entries)     u_h = V_hᵀ O_h (D x N)
    s_{h,i} = z_qᵀ W_h z_i,   p_h = softmax_i(s_h),   ŷ = sum_h u_hᵀ sum_i p_{h,i} z_i   (N outputs)

Loss: mean over prompts *and outputs* of ``(ŷ - y_q)^2`` (torch ``MSELoss``). Init: PyTorch
``nn.Linear`` default, ``Q, K, V ~ U(±1/sqrt(D))``, ``O ~ U(±1/sqrt(H D))``. The *linear*
baseline (notes icl_regression §7, reconstructed [?]) replaces ``p_{h,i}`` by ``s_{h,i} / L_train``: a fixed
normalisation, so it is GD with step ``eta L'/L_train`` at test length ``L'``.

Gradients (notes icl_regression §12, hand-written): with ``r_n = 2 (ŷ_n - y_{q,n}) / (B N)``,
``g_u[h] = sum_b a_h r^T``, ``v_{h,i} = sum_n r_n u_{h,:,n}ᵀ z_i``,
``g_s = r p (v - <p, v>)`` (softmax) or ``r v / L_train`` (linear),
``G_h = sum_b z_q (g_s Z)^T``; then ``dQ_h = c K_h G_hᵀ, dK_h = c Q_h G_h, dV_h = O_h g_u[h]ᵀ,
dO_h = V_h g_u[h]``. :func:`reference_loss_and_grads` is the einsum form (array namespace:
runs on NumPy or CuPy), the obviously-correct reference; the Numba kernels are the fast path.

Random numbers (fast path)
--------------------------
Prompts are generated *inside* the Numba kernels from a counter-based stream: Philox4x64-10
(bit-identical to :class:`numpy.random.Philox` — tested) with key = the run's data key and
counter ``(block j, prompt b, step t, stream)``, turned into normals by Box-Muller with
vectorised polynomial log/sin/cos (``|error| < 1e-14`` against NumPy's). A prompt's data is thus a
pure function of ``(key, t, b, stream)``: training needs no RNG state (resuming is exact),
runs sharing a data key (same seed, different H) see the same prompts (common random
numbers), and the kernels run (run, prompt chunk) tasks on a thread pool with a fixed chunking, so
results do not depend on the thread count (see :func:`_run_tasks`). Streams: 0 = training, 1 = validation, 2 = test.
Per prompt the normals are laid out as ``[x (d x L) | e (N x L) | x_q (d) | g_beta (N x d) |
e_q (N)]``, indices into the flat normal buffer of :func:`normals` (block j contributes entries
j, nb + j, 2 nb + j and 3 nb + j, so the generating loop vectorises).

Batched training
----------------
:class:`BatchedTrainer` trains R runs at once: parameters ``theta`` of shape (R, P) (views
Q, K, V, O with a leading run axis; heads padded to ``H_max`` with zeros, which stay zero: a
zero head gets zero gradients, and Adam moves nothing with a zero gradient), one fused kernel
call per step (data + forward + backward for all runs), Adam (lr 1e-3, betas (0.9, 0.999),
eps 1e-8, PyTorch's bias-corrected form). ``state_dict()`` holds everything needed to resume
bit for bit.

Pattern metrics (notes icl_regression §4, authors' ``extract_kq_ov_details``): on the x-block ``W_x = W_h[:d, :d]``
``diag_ratio = ||diag W_x|| / ||W_x||_F``, ``diag_cv2 = Var(diag)/mean(diag)^2`` (population
variance [?]), ``last_entry_ratio = |u_h[d+n, n]| / ||u_h[:, n]||``, ``omega_h = mean diag W_x``,
``mu_h = u_h[d+n, n]`` (y_n -> output n), ``eta = sum_h mu_h omega_h``.

Modules (this package re-exports every public name, so ``from sim import icl_regression`` works
as before): :mod:`.tasks` (data laws, keys), :mod:`.philox` (the random stream),
:mod:`.prompts` (prompt generation), :mod:`.kernels` (Numba forward/backward),
:mod:`.model` (parametrisation, fast and reference gradients, evaluation), :mod:`.training`
(Adam, batched and reference trainers), :mod:`.metrics` (pattern metrics),
:mod:`.predictors` (closed-form predictors by Monte Carlo).
"""
from __future__ import annotations

from sim.icl_regression.metrics import PATTERN_KEYS, head_sums, pattern_metrics
from sim.icl_regression.model import (evaluate_sq_errors, factor_grads, init_params, loss_and_grads,
                                      loss_and_grads_merged, merge, n_params, param_views, reference_forward,
                                      reference_loss_and_grads)
from sim.icl_regression.philox import normals, philox4x64
from sim.icl_regression.predictors import (predict_dgd, predict_gd, predict_preconditioned, predict_ridge,
                                           predict_softmax_heads, ridge_conditional_risk)
from sim.icl_regression.prompts import Prompts, generate_prompts, prompts_to_tokens
from sim.icl_regression.tasks import (DEFAULT_CHUNKS, KINDS, STREAM_TEST, STREAM_TRAIN, STREAM_VAL, TaskSpec, data_key,
                                      isotropic_task, multitask_task, stack_tasks, toeplitz_task)
from sim.icl_regression.training import Adam, BatchedTrainer, ReferenceTrainer, RunSpec

# private names, re-exported for the GPU twin's tests (``_task_arrays``) and direct kernel callers
from sim.icl_regression._numba import _run_tasks  # noqa: F401, E402, I001
from sim.icl_regression.kernels import _data_kernel, _eval_kernel, _fb_prompt, _train_kernel  # noqa: F401
from sim.icl_regression.model import _run_arrays  # noqa: F401
from sim.icl_regression.prompts import _gen_prompt, _n_blocks  # noqa: F401
from sim.icl_regression.tasks import _task_arrays  # noqa: F401

__all__ = [
    "TaskSpec", "isotropic_task", "toeplitz_task", "multitask_task",
    "STREAM_TRAIN", "STREAM_VAL", "STREAM_TEST", "KINDS", "DEFAULT_CHUNKS",
    "philox4x64", "normals", "data_key", "generate_prompts", "Prompts",
    "RunSpec", "init_params", "merge", "param_views", "n_params",
    "loss_and_grads", "loss_and_grads_merged", "reference_loss_and_grads", "reference_forward",
    "factor_grads", "evaluate_sq_errors", "stack_tasks",
    "Adam", "BatchedTrainer", "ReferenceTrainer",
    "pattern_metrics", "PATTERN_KEYS", "head_sums",
    "predict_gd", "predict_dgd", "predict_ridge", "ridge_conditional_risk", "predict_softmax_heads",
    "predict_preconditioned", "prompts_to_tokens",
]
