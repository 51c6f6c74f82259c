"""The device trainer: the GPU state of ``sim.icl_regression.BatchedTrainer(device="gpu")``."""
from __future__ import annotations

import numpy as np
from numba import cuda

from gpu.icl_regression.device_math import _SIM, PPB_EVAL, PPB_TRAIN, SHARED_LIMIT, TPB_RUN
from gpu.icl_regression.host import _configure, _dev, _launch_prompts, _prompt_launcher, _tpb
from gpu.icl_regression.prompt_kernel import _acc_len
from gpu.icl_regression.run_kernels import grad_kernel, update_kernel


class DeviceTrainer:
    """The device state of :class:`sim.icl_regression.BatchedTrainer` with ``device="gpu"``.

    Holds theta, Adam's moments, the merged parameters, the per-run data laws and keys on the
    device. :meth:`run_steps` launches three kernels per step without synchronising and reads
    the summed losses and the divergence flags once at the end; ``step_count`` and ``adam_t``
    follow the CPU trainer's counters. Arrays handed in are NumPy (as built by the CPU
    trainer); results are NumPy."""

    def __init__(self, theta, keys, tasks, n_heads, kind, lin_scale, *, d: int, N: int, H_max: int, L: int,
                 batch: int, lr: float, betas, eps: float, temperature: float, tpb: int | None = None,
                 ppb: int | None = None, workspace: str | None = None):
        self.R, self.P = theta.shape
        self.d, self.N, self.D, self.H_max = int(d), int(N), int(d) + int(N), int(H_max)
        self.L, self.B = int(L), int(batch)
        self.lr, self.b1, self.b2, self.eps = float(lr), float(betas[0]), float(betas[1]), float(eps)
        self.c = float(temperature)
        self.tpb = _tpb(tpb)
        self.ppb = int(ppb or PPB_TRAIN)
        self.workspace = workspace
        self.nchunk = (self.B + self.ppb - 1) // self.ppb
        nacc = _acc_len(self.d, self.N, self.H_max, True)
        if 8 * nacc > SHARED_LIMIT:
            raise ValueError(f"the GPU trainer keeps a run's gradient (H_max D (D + N) + 1 = {nacc} numbers) in shared "
                             f"memory: at most {SHARED_LIMIT // 8}; use fewer heads or a smaller d")
        self.step_count = 0
        self.adam_t = 0
        self.theta = _dev(theta, float)
        self.m = cuda.to_device(np.zeros((self.R, self.P)))
        self.v = cuda.to_device(np.zeros((self.R, self.P)))
        self.grad = cuda.device_array((self.R, self.P))
        D, N, Hm = self.D, self.N, self.H_max
        self.W = cuda.device_array((self.R, Hm, D, D))
        self.U = cuda.device_array((self.R, Hm, D, N))
        self.keys = _dev(keys, np.uint64)
        self.tasks = tuple(_dev(a, float) for a in tasks)
        self.nh = _dev(n_heads, np.int64)
        self.kind = _dev(kind, np.int64)
        self.ls = _dev(lin_scale, float)
        self.part = cuda.device_array((self.R, self.nchunk, Hm * D * D + Hm * D * N + 1))
        self.loss = cuda.device_array(self.R)
        self.loss_acc = cuda.device_array(self.R)
        self.bad = cuda.to_device(np.zeros(self.R, dtype=np.int64))
        self._dummy_sq = cuda.device_array((1, 1, 1))
        # launch configurations, made once (a training step is three launches of these)
        self._train, self._train_scratch = _prompt_launcher(self.R, self.d, N, Hm, self.B, self.L, self.ppb, True,
                                                            self.tpb, workspace)
        run_tpb = 8 if _SIM else TPB_RUN
        self._grad_k = _configure(grad_kernel(D, N, Hm), self.R, run_tpb)
        self._update_k = _configure(update_kernel(D, N, Hm), self.R, run_tpb)
        self._merge()

    # --------------------------------------------------------------------- launches
    def _merge(self):
        self._update_k(self.theta, self.m, self.v, self.grad, self.bad, 0, self.b1, self.b2, 1.0 - self.b1,
                       1.0 - self.b2, 0.0, 1.0, self.eps, self.c, self.W, self.U)

    def _forward_backward(self, t: int, check: bool, first: bool):
        self._train(self.W, self.U, self.nh, self.kind, self.ls, self.keys, *self.tasks, int(t), 0, 0, self.B, self.L,
                    self.ppb, self._train_scratch, self.part, self._dummy_sq)
        self._grad_k(self.theta, self.part, self.c, float(self.B * self.N), int(check), int(first), int(t), self.grad,
                     self.loss, self.loss_acc, self.bad)

    def _adam(self):
        self.adam_t += 1
        tt = self.adam_t
        step = self.lr / (1.0 - self.b1**tt)
        bc2 = 1.0 - self.b2**tt
        self._update_k(self.theta, self.m, self.v, self.grad, self.bad, 1, self.b1, self.b2, 1.0 - self.b1,
                       1.0 - self.b2, step, bc2, self.eps, self.c, self.W, self.U)

    # -------------------------------------------------------------------- interface
    def grads(self, t: int):
        """(loss (R,), grad (R, P)) at step t for the current parameters (no update)."""
        self._forward_backward(int(t), check=False, first=True)
        return self.loss.copy_to_host(), self.grad.copy_to_host()

    def run_steps(self, n: int) -> np.ndarray:
        """n Adam steps on fresh batches; returns the sum of the n batch losses (R,). Raises
        FloatingPointError (parameters left at the last finite step, as on the CPU)."""
        s0, a0 = self.step_count, self.adam_t
        for k in range(int(n)):
            self._forward_backward(self.step_count, check=True, first=k == 0)
            self._adam()
            self.step_count += 1
        total = self.loss_acc.copy_to_host()
        bad = self.bad.copy_to_host()
        if np.any(bad):
            at = int(bad[bad > 0].min()) - 1
            self.step_count = at
            self.adam_t = a0 + (at - s0)
            runs = np.nonzero(bad == at + 1)[0].tolist()
            raise FloatingPointError(f"training diverged at step {at} (runs {runs}): "
                                     "non-finite loss or gradient; lower the learning rate")
        return total

    def merged(self):
        return self.W.copy_to_host(), self.U.copy_to_host()

    def state(self):
        return self.theta.copy_to_host(), self.m.copy_to_host(), self.v.copy_to_host()

    def load(self, theta, m, v, adam_t: int, step: int) -> None:
        self.theta = _dev(theta, float)
        self.m = _dev(m, float)
        self.v = _dev(v, float)
        self.adam_t = int(adam_t)
        self.step_count = int(step)
        self.bad = cuda.to_device(np.zeros(self.R, dtype=np.int64))
        self._merge()

    def evaluate(self, n_prompts: int, L: int, *, stream: int, t: int, keys=None, first: int = 0) -> np.ndarray:
        """Squared errors (R, n, N) of the current merged parameters (forward only)."""
        n = int(n_prompts)
        sq = cuda.device_array((self.R, n, self.N))
        if n:
            k = self.keys if keys is None else _dev(np.broadcast_to(np.asarray(keys, np.uint64), (self.R, 2)))
            _launch_prompts(self.W, self.U, self.nh, self.kind, self.ls, k, self.tasks, t, stream, first, n, int(L),
                            PPB_EVAL, False, self._dummy_sq, sq, self.tpb, None)
        return sq.copy_to_host()
