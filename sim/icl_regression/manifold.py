"""Plain gradient descent of one-layer softmax attention on its pattern manifold (notes
icl_regression §2, §5, §5.7): the trained model that the reduced
(omega, mu) ODE describes, with the *exact* loss in place of the reduced one.

Model
-----
The one-layer model of :mod:`sim.icl_regression` with each head on the pattern manifold,

    W_h = omega_h [[I_d, 0], [0, 0]]   (KQ: x-block omega_h I, temperature included)
    u_h = mu_h e_D                      (OV: the label slot only)

so that ``ŷ = sum_h mu_h sum_i softmax_i(omega_h x_iᵀx_q) y_i`` -- the reduced model of §5.1,
whose loss the reduced ODE replaces by its large-L approximation L̃. Only isotropic one-output
tasks (:func:`~sim.icl_regression.isotropic_task`).

Gradient and step
-----------------
The parameters are the 2H numbers (omega_h, mu_h); their gradient is the full model's merged
gradient (``G_h = dMSE/dW_h``, ``g_h = dMSE/du_h`` from the project's forward/backward,
:func:`~sim.icl_regression.loss_and_grads_merged`) by the chain rule,

    dMSE/domega_h = tr G_h[:d, :d],     dMSE/dmu_h = g_h[d],

and one step is ``theta <- theta - dt_k * grad(MSE/2)``: explicit Euler with step ``dt_k`` of
gradient flow on half the MSE, the flow the reduced ODE approximates (time ``t = dt_1 + ... +
dt_k``, the authors' "time = step x 0.01" for dt = 0.01).

Data
----
Step ``k`` draws fresh prompts from the Philox stream (:func:`~sim.icl_regression.generate_prompts`,
stream 0, counter ``t = k``): replicate ``r`` uses prompts ``r B .. (r + 1) B - 1``, so the R
replicates are independent runs from the same start. Every prompt is used twice, with its query
``(x_q, y_q)`` and with the mirrored query ``(-x_q, -y_q)`` -- a prompt of the same law, so the
gradient stays unbiased. The mirror maps the scores of a head with omega onto those of a head
with -omega: an antisymmetric state (omega, -omega), (mu, -mu) gets an exactly antisymmetric
gradient (notes §5.7), as the population flow does, and the label-mean noise ``mu ȳ`` of a
single prompt, which would otherwise seed the symmetric mode the plateau amplifies, cancels.
"""
from __future__ import annotations

import numpy as np

from sim.icl_regression.model import loss_and_grads_merged
from sim.icl_regression.prompts import generate_prompts
from sim.icl_regression.tasks import STREAM_TRAIN, TaskSpec

__all__ = ["manifold_params", "manifold_grad", "manifold_gd"]


def manifold_params(omega, mu, d: int):
    """Merged parameters ``(W (R, H, D, D), U (R, H, D, 1))`` of pattern-manifold heads
    ``omega, mu`` (R, H), ``D = d + 1``."""
    omega = np.atleast_2d(np.asarray(omega, dtype=float))
    mu = np.atleast_2d(np.asarray(mu, dtype=float))
    R, H = omega.shape
    D = d + 1
    W = np.zeros((R, H, D, D))
    idx = np.arange(d)
    W[:, :, idx, idx] = omega[:, :, None]
    U = np.zeros((R, H, D, 1))
    U[:, :, d, 0] = mu
    return W, U


def manifold_grad(omega, mu, Z, zq, yq, d: int):
    """``(MSE (R,), dMSE/domega (R, H), dMSE/dmu (R, H))`` of pattern-manifold heads on given
    prompts: tokens ``Z`` (R, B, L, D), query tokens ``zq`` (R, B, D), labels ``yq`` (R, B, 1)."""
    W, U = manifold_params(omega, mu, d)
    loss, G, gu, _ = loss_and_grads_merged(W, U, Z, zq, yq)
    g_omega = np.trace(G[:, :, :d, :d], axis1=-2, axis2=-1)
    return loss, g_omega, gu[:, :, d, 0]


def _batch(task: TaskSpec, key, step: int, runs: int, batch: int, L: int):
    """The mirrored prompts of one step: ``(Z (R, 2B, L, D), zq (R, 2B, D), yq (R, 2B, 1))``."""
    Z, zq, yq, _ = generate_prompts(task, key, runs * batch, L, t=int(step), stream=STREAM_TRAIN, layout="kernel")
    D = Z.shape[1]
    Z = np.swapaxes(Z, 1, 2).reshape(runs, batch, L, D)
    zq = zq.reshape(runs, batch, D)
    yq = yq.reshape(runs, batch, 1)
    return np.concatenate([Z, Z], axis=1), np.concatenate([zq, -zq], axis=1), np.concatenate([yq, -yq], axis=1)


def manifold_gd(omega0, mu0, task: TaskSpec, key, *, L: int, dts, log_at, runs: int = 4, batch: int = 64) -> dict:
    """Plain gradient descent on the pattern manifold (module docstring) from ``omega0, mu0``
    (H,) for every one of ``runs`` replicates: step ``k`` has size ``dts[k]`` and fresh mirrored
    prompts of length ``L`` (``batch`` per replicate, each used with both queries).

    ``log_at``: the increasing step counts (0 = the start) after which the state is recorded.
    Returns ``{"omega", "mu"}`` (len(log_at), runs, H), ``"time"`` (len(log_at),) = the sum of
    the steps taken, and ``"loss"`` (len(log_at), runs): the mean batch MSE/2 of the steps since
    the previous record (at step 0: of the first batch, before any step)."""
    if task.n_out != 1 or not np.allclose(task.chol, np.eye(task.d)):
        raise ValueError("manifold_gd: an isotropic one-output task (isotropic_task)")
    if L < 2 or runs < 1 or batch < 1:
        raise ValueError("manifold_gd: L >= 2, runs >= 1, batch >= 1")
    dts = np.asarray(dts, dtype=float)
    log_at = np.asarray(log_at, dtype=np.int64)
    if np.any(dts <= 0) or np.any(np.diff(log_at) <= 0) or log_at[0] < 0 or log_at[-1] > dts.size:
        raise ValueError("manifold_gd: positive steps and increasing log points within them")
    d = task.d
    om = np.tile(np.asarray(omega0, dtype=float), (runs, 1))
    mu = np.tile(np.asarray(mu0, dtype=float), (runs, 1))
    T, H = log_at.size, om.shape[1]
    out = {"omega": np.empty((T, runs, H)), "mu": np.empty((T, runs, H)), "loss": np.zeros((T, runs)),
           "time": np.concatenate([[0.0], np.cumsum(dts)])[log_at]}
    acc, n_acc, k = np.zeros(runs), 0, 0
    for step in range(int(log_at[-1]) + 1):
        if step == log_at[k]:  # the state after `step` steps, and the mean loss of the steps since the last record
            out["omega"][k], out["mu"][k] = om, mu
            if n_acc:
                out["loss"][k] = acc / n_acc
            acc[:], n_acc, k = 0.0, 0, k + 1
            if k == T:
                break
        loss, g_om, g_mu = manifold_grad(om, mu, *_batch(task, key, step, runs, batch, L), d)
        if not (np.all(np.isfinite(loss)) and np.all(np.isfinite(g_om)) and np.all(np.isfinite(g_mu))):
            raise FloatingPointError(f"manifold_gd diverged at step {step}: lower the step size")
        if step == 0 and log_at[0] == 0:
            out["loss"][0] = loss / 2  # the start's loss: the first batch, before any step
        om = om - dts[step] * g_om / 2
        mu = mu - dts[step] * g_mu / 2
        acc += loss / 2
        n_acc += 1
    return out
