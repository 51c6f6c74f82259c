"""Adam, the batched trainer of R runs (one fused kernel call per step) and the per-run NumPy
reference trainer (notes icl_regression §3, §12; see the package docstring, "Batched training")."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from sim.backend import engine
from sim.icl_regression._numba import _run_tasks
from sim.icl_regression.kernels import _train_kernel
from sim.icl_regression.model import (evaluate_sq_errors, factor_grads, init_params, merge, param_views,
                                      reference_loss_and_grads)
from sim.icl_regression.tasks import KINDS, STREAM_TRAIN, STREAM_VAL, DEFAULT_CHUNKS, TaskSpec, _task_arrays, data_key


class Adam:
    """Adam with PyTorch's bias-corrected update, on a flat (R, P) parameter array."""

    def __init__(self, shape, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        self.lr, self.b1, self.b2, self.eps = float(lr), float(betas[0]), float(betas[1]), float(eps)
        self.m = np.zeros(shape)
        self.v = np.zeros(shape)
        self.t = 0

    def update(self, theta: np.ndarray, grad: np.ndarray) -> None:
        self.t += 1
        self.m *= self.b1
        self.m += (1.0 - self.b1) * grad
        self.v *= self.b2
        self.v += (1.0 - self.b2) * grad * grad
        step = self.lr / (1.0 - self.b1**self.t)
        denom = np.sqrt(self.v / (1.0 - self.b2**self.t))
        denom += self.eps
        theta -= step * self.m / denom


# ====================================================================== batched trainer
@dataclass(frozen=True)
class RunSpec:
    """One training run: H heads, a data law, the attention kind, a data seed (its Philox key:
    runs with the same data seed see the same prompts) and an init seed."""

    H: int
    task: TaskSpec
    data_seed: object
    init_seed: object
    kind: str = "softmax"


class BatchedTrainer:
    """Train R one-layer attention models at once (see the module docstring).

    All runs share ``d``, ``N``, ``L`` and the batch size; the data law (covariance, noise),
    the head count and the attention kind may differ per run.

    ``device="gpu"`` keeps the state on a CUDA device and runs each step there
    (the device engine ``icl.trainer`` of :mod:`sim.backend`, ``gpu.icl_regression.DeviceTrainer``
    once ``gpu`` is imported: same prompts, same initialisation, same
    trajectory up to floating-point reassociation; ``gpu_options`` = its ``tpb``, ``ppb``,
    ``workspace``). The host arrays ``theta`` and ``opt`` then hold the state of construction
    (or of the last :meth:`load_state_dict`) only: read the live one through
    :meth:`state_dict`, :meth:`merged` or :meth:`views`.
    :meth:`run_steps` runs many steps with one synchronisation."""

    def __init__(self, runs: Sequence[RunSpec], L: int, batch: int = 256, lr: float = 1e-3,
                 betas=(0.9, 0.999), eps: float = 1e-8, temperature: float | None = None,
                 nchunk: int = DEFAULT_CHUNKS, device: str = "cpu", gpu_options: dict | None = None):
        if not runs:
            raise ValueError("no runs to train")
        d, N = runs[0].task.d, runs[0].task.n_out
        if any(r.task.d != d or r.task.n_out != N for r in runs):
            raise ValueError("batched runs must share d and the number of outputs")
        self.runs = list(runs)
        self.R = len(runs)
        self.d, self.N, self.D = d, N, d + N
        self.L, self.B = int(L), int(batch)
        self.H_max = max(r.H for r in runs)
        self.temperature = 1.0 / math.sqrt(self.D) if temperature is None else float(temperature)
        self.nchunk = max(1, min(int(nchunk), self.B))
        self.n_heads = np.array([r.H for r in runs], dtype=np.int64)
        self.kind = np.array([KINDS.index(r.kind) for r in runs], dtype=np.int64)
        self.lin_scale = np.where(self.kind == 1, 1.0 / self.L, 0.0)
        self.keys = np.stack([data_key(r.data_seed) for r in runs])
        arrs = [_task_arrays(r.task) for r in runs]
        self.chol, self.bscale, self.bmask, self.nsd, self.qsd = (np.ascontiguousarray(np.stack(a)) for a in zip(*arrs))
        self.theta = np.stack([init_params(np.random.Generator(np.random.Philox(
            r.init_seed if isinstance(r.init_seed, np.random.SeedSequence) else np.random.SeedSequence(int(r.init_seed)))),
            r.H, self.D, N, self.H_max) for r in runs])
        self.opt = Adam(self.theta.shape, lr, betas, eps)
        self.step_count = 0
        P = self.theta.shape[1]
        self._grad = np.empty((self.R, P))
        self._loss = np.empty((self.R, self.nchunk))
        self._G = np.empty((self.R, self.nchunk, self.H_max, self.D, self.D))
        self._gu = np.empty((self.R, self.nchunk, self.H_max, self.D, N))
        if device not in ("cpu", "gpu"):
            raise ValueError(f"device must be 'cpu' or 'gpu', not {device!r}")
        self.device = device
        self._dev = None
        if device == "gpu":  # the registered device engine (gpu/ registers it; sim never imports gpu)
            self._dev = engine("icl.trainer")(self.theta, self.keys, (self.chol, self.bscale, self.bmask, self.nsd, self.qsd),
                                      self.n_heads, self.kind, self.lin_scale, d=d, N=N, H_max=self.H_max, L=self.L,
                                      batch=self.B, lr=lr, betas=betas, eps=eps, temperature=self.temperature,
                                      **(gpu_options or {}))

    # ------------------------------------------------------------------ parameters
    def views(self, theta=None):
        if theta is None:
            theta = self.theta if self._dev is None else self._dev.state()[0]
        return param_views(theta, self.H_max, self.D, self.N)

    def merged(self):
        """(W (R, H_max, D, D), U (R, H_max, D, N)) of the current parameters."""
        if self._dev is not None:
            return self._dev.merged()
        Q, K, V, O = self.views()
        W, U = merge(Q, K, V, O, self.temperature)
        return np.ascontiguousarray(W), np.ascontiguousarray(U)

    # ------------------------------------------------------------------------ training
    def grads(self, t: int | None = None) -> np.ndarray:
        """Mean batch loss (R,) at step ``t`` (default: the next step); fills ``self._grad``."""
        t = self.step_count if t is None else t
        if self._dev is not None:
            loss, self._grad[...] = self._dev.grads(int(t))
            return loss
        W, U = self.merged()
        _run_tasks(_train_kernel, W, U, self.n_heads, self.kind, self.lin_scale, self.keys, self.chol, self.bscale,
                   self.bmask, self.nsd, self.qsd, int(t), STREAM_TRAIN, self.B, self.L, self.d, self.nchunk,
                   self._loss, self._G, self._gu, n_tasks=self.R * self.nchunk)
        G = self._G.sum(axis=1)
        gu = self._gu.sum(axis=1)
        dQ, dK, dV, dO = factor_grads(*self.views(), G, gu, self.temperature)
        gQ, gK, gV, gO = self.views(self._grad)
        gQ[...] = dQ
        gK[...] = dK
        gV[...] = dV
        gO[...] = dO
        return self._loss.sum(axis=1) / (self.B * self.N)

    def step(self) -> np.ndarray:
        """One Adam step on a fresh batch for every run; returns the batch losses (R,)."""
        if self._dev is not None:
            return self.run_steps(1)
        with np.errstate(over="ignore", invalid="ignore"):  # non-finite values are reported below
            loss = self.grads()
        if not np.all(np.isfinite(loss)) or not np.all(np.isfinite(self._grad)):
            bad = np.nonzero(~np.isfinite(loss))[0].tolist()
            raise FloatingPointError(f"training diverged at step {self.step_count} (runs {bad}): "
                                     "non-finite loss or gradient; lower the learning rate")
        self.opt.update(self.theta, self._grad)
        self.step_count += 1
        return loss

    def run_steps(self, n: int) -> np.ndarray:
        """``n`` steps; returns the sum of their batch losses (R,). On the GPU one host
        synchronisation for all n (a divergence is reported when they end, with the step it
        happened at and the parameters of that step, as :meth:`step` does)."""
        if self._dev is None:
            total = np.zeros(self.R)
            for _ in range(int(n)):
                total += self.step()
            return total
        try:
            return self._dev.run_steps(int(n))
        finally:
            self.step_count, self.opt.t = self._dev.step_count, self._dev.adam_t

    # ---------------------------------------------------------------------- evaluation
    def evaluate(self, n_prompts: int, L: int | None = None, *, stream: int = STREAM_VAL, t: int = 0,
                 keys=None) -> np.ndarray:
        """Per-prompt squared errors (R, n, N) on prompts 0..n-1 of (stream, t) at length L."""
        if self._dev is not None:
            return self._dev.evaluate(n_prompts, self.L if L is None else L, stream=stream, t=t, keys=keys)
        W, U = self.merged()
        return evaluate_sq_errors(W, U, self.n_heads, self.kind, self.lin_scale,
                                  self.keys if keys is None else keys,
                                  (self.chol, self.bscale, self.bmask, self.nsd, self.qsd),
                                  n_prompts, self.L if L is None else L, stream=stream, t=t)

    # --------------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict:
        if self._dev is not None:
            theta, m, v = self._dev.state()
            return {"theta": theta, "adam_m": m, "adam_v": v, "adam_t": np.int64(self._dev.adam_t),
                    "step": np.int64(self._dev.step_count), "keys": self.keys.copy()}
        return {"theta": self.theta.copy(), "adam_m": self.opt.m.copy(), "adam_v": self.opt.v.copy(),
                "adam_t": np.int64(self.opt.t), "step": np.int64(self.step_count), "keys": self.keys.copy()}

    def load_state_dict(self, state: dict) -> None:
        if state["theta"].shape != self.theta.shape or not np.array_equal(state["keys"], self.keys):
            raise ValueError("checkpoint does not belong to these runs (shapes or data keys differ)")
        self.theta[...] = state["theta"]
        self.opt.m[...] = state["adam_m"]
        self.opt.v[...] = state["adam_v"]
        self.opt.t = int(state["adam_t"])
        self.step_count = int(state["step"])
        if self._dev is not None:
            self._dev.load(self.theta, self.opt.m, self.opt.v, self.opt.t, self.step_count)


class ReferenceTrainer:
    """A plain per-run NumPy training loop (notes icl_regression §12): ``numpy.random.Generator`` data, the
    einsum reference gradients, the same Adam. The benchmark's baseline."""

    def __init__(self, run: RunSpec, L: int, batch: int = 256, lr: float = 1e-3, temperature=None):
        self.task = run.task
        self.d, self.N, self.D = run.task.d, run.task.n_out, run.task.D
        self.L, self.B, self.H = L, batch, run.H
        self.c = 1.0 / math.sqrt(self.D) if temperature is None else temperature
        self.kind = run.kind
        self.rng = np.random.Generator(np.random.Philox(data_key(run.data_seed)[0]))
        self.theta = init_params(np.random.Generator(np.random.Philox(
            run.init_seed if isinstance(run.init_seed, np.random.SeedSequence)
            else np.random.SeedSequence(int(run.init_seed)))), run.H, self.D, self.N)[None]
        self.opt = Adam(self.theta.shape, lr)

    def batch(self):
        rng, B, L, d, N, T = self.rng, self.B, self.L, self.d, self.N, self.task
        x = rng.standard_normal((B, L, d)) @ T.chol.T
        xq = rng.standard_normal((B, d)) @ T.chol.T
        beta = T.beta_scale[None, :, None] * T.beta_mask[None] * rng.standard_normal((B, N, d))
        y = np.einsum("bld,bnd->bln", x, beta) + T.noise_sd * rng.standard_normal((B, L, N))
        yq = np.einsum("bd,bnd->bn", xq, beta) + T.query_noise_sd * rng.standard_normal((B, N))
        Z = np.concatenate([x, y], axis=2)
        zq = np.concatenate([xq, np.zeros((B, N))], axis=1)
        return Z[None], zq[None], yq[None]

    def step(self) -> float:
        Z, zq, yq = self.batch()
        Q, K, V, O = param_views(self.theta, self.H, self.D, self.N)
        loss, grads = reference_loss_and_grads(Q, K, V, O, Z, zq, yq, temperature=self.c, kind=self.kind,
                                               lin_scale=1.0 / self.L)
        g = np.concatenate([a.reshape(1, -1) for a in grads], axis=1)
        self.opt.update(self.theta, g)
        return float(loss[0])
