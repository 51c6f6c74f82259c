"""Data laws of in-context regression (notes icl_regression §1, §8): :class:`TaskSpec` and
its three families, the data keys of the counter-based streams, and the per-run task arrays the
kernels read.

A task is ``x = C g`` (``Sigma = C Cᵀ``), ``beta_n = s_n (m_n ⊙ g_beta)``,
``y_n = beta_nᵀx + sigma_n e``, ``y_{q,n} = beta_nᵀx_q + sigma_{q,n} e_q`` (see the package
docstring). Streams: 0 = training, 1 = validation, 2 = test.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

STREAM_TRAIN, STREAM_VAL, STREAM_TEST = 0, 1, 2
KINDS = ("softmax", "linear")
DEFAULT_CHUNKS = 8  # prompt chunks per run and step: fixed, so results do not depend on threads


# =============================================================================== tasks
@dataclass(frozen=True)
class TaskSpec:
    """Data law of one run (see the module docstring); arrays are float64."""

    d: int
    chol: np.ndarray  # (d, d) lower-triangular, Sigma = chol chol^T
    beta_scale: np.ndarray  # (N,)
    beta_mask: np.ndarray  # (N, d) 0/1
    noise_sd: np.ndarray  # (N,)
    query_noise_sd: np.ndarray  # (N,)
    name: str = "isotropic"
    params: dict = field(default_factory=dict)

    @property
    def n_out(self) -> int:
        return int(self.beta_scale.shape[0])

    @property
    def D(self) -> int:
        return self.d + self.n_out

    @property
    def cov(self) -> np.ndarray:
        return self.chol @ self.chol.T

    def describe(self) -> dict:
        return {"name": self.name, "d": self.d, "n_out": self.n_out, **self.params}


def isotropic_task(d: int, sigma2: float = 0.1, query_noise: bool = True) -> TaskSpec:
    """x ~ N(0, I_d), beta ~ N(0, I/d), noise variance sigma2 (query label noisy by default)."""
    sd = math.sqrt(sigma2)
    return TaskSpec(d, np.eye(d), np.array([1.0 / math.sqrt(d)]), np.ones((1, d)), np.array([sd]),
                    np.array([sd if query_noise else 0.0]), "isotropic",
                    {"sigma2": float(sigma2), "query_noise": bool(query_noise), "beta_var": 1.0 / d})


def toeplitz_task(d: int, rho: float, sigma2: float = 0.1) -> TaskSpec:
    """x ~ N(0, Sigma) with Sigma_ij = rho^|i-j| (AR(1); notes icl_regression §8), beta ~ N(0, I/d)."""
    idx = np.arange(d)
    cov = float(rho) ** np.abs(idx[:, None] - idx[None, :])
    base = isotropic_task(d, sigma2)
    return TaskSpec(d, np.linalg.cholesky(cov), base.beta_scale, base.beta_mask, base.noise_sd,
                    base.query_noise_sd, "toeplitz", {**base.params, "rho": float(rho)})


def multitask_task(d: int = 6, supports=((0, 4), (2, 6)), beta_var: float = 1.0,
                   noise_var: float = 0.4, query_noise: bool = False) -> TaskSpec:
    """Multi-task regression (notes icl_regression §1): task n reads x[a_n:b_n], beta_n ~ N(0, beta_var I),
    label-noise variance ``noise_var`` (4 x 0.1: SNR 1 : 0.1), noiseless query labels."""
    n = len(supports)
    mask = np.zeros((n, d))
    for k, (a, b) in enumerate(supports):
        if not (0 <= a < b <= d):
            raise ValueError(f"task support {a}:{b} is not inside 0:{d}")
        mask[k, a:b] = 1.0
    sd = math.sqrt(noise_var)
    return TaskSpec(d, np.eye(d), np.full(n, math.sqrt(beta_var)), mask, np.full(n, sd),
                    np.full(n, sd if query_noise else 0.0), "multitask",
                    {"supports": [list(s) for s in supports], "beta_var": float(beta_var),
                     "noise_var": float(noise_var), "query_noise": bool(query_noise)})


def data_key(seed) -> np.ndarray:
    """The (2,) uint64 Philox key of a data stream, from a SeedSequence or an int."""
    ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(int(seed))
    return ss.generate_state(2, np.uint64)


def _task_arrays(task: TaskSpec):
    return (np.ascontiguousarray(task.chol, dtype=float), np.ascontiguousarray(task.beta_scale, dtype=float),
            np.ascontiguousarray(task.beta_mask, dtype=float), np.ascontiguousarray(task.noise_sd, dtype=float),
            np.ascontiguousarray(task.query_noise_sd, dtype=float))


def stack_tasks(tasks, R: int):
    """Per-run task arrays (chol, beta_scale, beta_mask, noise_sd, query_noise_sd), each with a
    leading run axis, from one TaskSpec (shared) or a sequence of R TaskSpecs."""
    if isinstance(tasks, TaskSpec):
        tasks = [tasks] * R
    if len(tasks) != R:
        raise ValueError(f"need {R} tasks, got {len(tasks)}")
    return tuple(np.ascontiguousarray(np.stack(a)) for a in zip(*(_task_arrays(t) for t in tasks)))
