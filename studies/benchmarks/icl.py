"""Benchmark suite ``icl``: cost per run-step of in-context-regression training.

Workload (issue: icl_regression): one Adam step of one-layer multi-head softmax attention with
H = 4 heads, d = 5, L = 40, a fresh batch of B = 256 prompts, for 8 runs. Implementations, side
by side in one process:

* ``numpy_per_run``  — a plain per-run NumPy loop (``sim.icl_regression.ReferenceTrainer``:
  ``numpy.random.Generator`` prompts, the einsum reference gradients, Adam), run after run;
* ``batched``        — ``BatchedTrainer`` with the 8 runs batched: prompts drawn inside the Numba
  kernel (counter-based Philox), fused forward/backward over (run, prompt chunk), one Adam update;
* ``batched_R1``     — the same trainer with a single run (what batching buys).

Correctness: on the same prompts the fast gradients equal the reference ones (max relative error).
Target: ``batched`` <= 0.7 ms per run-step on 2 cores.
"""
from __future__ import annotations

import numba
import numpy as np
import xarray as xr

from sim import icl_regression as icl
from studies.benchmarks._timing import best_time
from studies.sweep import str_coord

DESCRIPTION = "ICL training step, H=4, d=5, L=40, B=256: 8 runs batched (Numba) vs a per-run NumPy loop"
IMPLS = ("numpy_per_run", "batched", "batched_R1")
TARGET_MS = 0.7
R, H, D_X, L, B = 8, 4, 5, 40, 256


def _grad_agreement() -> float:
    task = icl.isotropic_task(D_X, 0.1)
    tr = icl.BatchedTrainer([icl.RunSpec(H, task, s, 100 + s) for s in range(2)], L=L, batch=B)
    for _ in range(20):
        tr.step()
    err = 0.0
    for r in range(2):
        Zk, zq, yq, _ = icl.generate_prompts(task, tr.keys[r], B, L, t=tr.step_count, stream=icl.STREAM_TRAIN,
                                             layout="kernel")
        Q, K, V, O = (x[r:r + 1] for x in tr.views())
        _, fast = icl.loss_and_grads(Q, K, V, O, np.swapaxes(Zk, 1, 2)[None], zq[None], yq[None])
        _, ref = icl.reference_loss_and_grads(Q, K, V, O, np.swapaxes(Zk, 1, 2)[None], zq[None], yq[None])
        err = max(err, max(float(np.abs(a - b).max() / np.abs(b).max()) for a, b in zip(fast, ref)))
    return err


def run(quick: bool = False) -> xr.Dataset:
    steps = 10 if quick else 60
    repeat = 2 if quick else 5
    task = icl.isotropic_task(D_X, 0.1)
    runs = [icl.RunSpec(H, task, s, 1000 + s) for s in range(R)]
    batched = icl.BatchedTrainer(runs, L=L, batch=B)
    single = icl.BatchedTrainer(runs[:1], L=L, batch=B)
    refs = [icl.ReferenceTrainer(r, L=L, batch=B) for r in runs]
    ref_steps = max(2, steps // 10)

    def loop_ref():
        for tr in refs:
            for _ in range(ref_steps):
                tr.step()

    def loop(tr):
        def f():
            for _ in range(steps):
                tr.step()
        return f

    t = {
        "batched": best_time(loop(batched), repeat=repeat) / (steps * R),
        "batched_R1": best_time(loop(single), repeat=repeat) / steps,
        "numpy_per_run": best_time(loop_ref, repeat=max(1, repeat // 2)) / (ref_steps * R),
    }
    ms = np.array([t[i] * 1e3 for i in IMPLS])
    ds = xr.Dataset(
        {"ms_per_run_step": (("impl",), ms, {"units": "ms", "long_name": "best wall time per run and Adam step"}),
         "speedup_vs_numpy": (("impl",), ms[0] / ms),
         "max_rel_grad_err": ((), _grad_agreement(), {"long_name": "batched kernel vs einsum reference gradients, "
                                                                   "same prompts (max |diff| / max |ref|)"})},
        coords={"impl": str_coord(IMPLS)},
        attrs={"runs": R, "H": H, "d": D_X, "L": L, "batch": B, "steps_timed": steps, "dtype": "float64",
               "numba_threads": numba.get_num_threads(), "target_ms_per_run_step": TARGET_MS})
    ds["verdict_target"] = ((), bool(ms[1] <= TARGET_MS),
                            {"description": f"batched <= {TARGET_MS} ms per run-step (H=4, d=5, L=40, B=256, 8 runs)"})
    ds["verdict_agree"] = ((), bool(float(ds["max_rel_grad_err"]) <= 1e-10),
                           {"description": "batched gradients within 1e-10 (relative) of the reference"})
    return ds


def summary(ds: xr.Dataset) -> str:
    rows = [f"   {'impl':<14} {'ms/run-step':>12} {'vs numpy':>9}"]
    for i, impl in enumerate(ds["impl"].values):
        rows.append(f"   {impl:<14} {ds['ms_per_run_step'].values[i]:>12.3f} {ds['speedup_vs_numpy'].values[i]:>8.1f}x")
    rows.append(f"   gradient agreement {float(ds['max_rel_grad_err']):.1e}; target {ds.attrs['target_ms_per_run_step']} ms "
                f"per run-step {'met' if bool(ds['verdict_target']) else 'MISSED'} "
                f"({ds.attrs['runs']} runs, H={ds.attrs['H']}, d={ds.attrs['d']}, L={ds.attrs['L']}, "
                f"B={ds.attrs['batch']}, {ds.attrs['numba_threads']} Numba threads, device {ds.attrs.get('device', '?')})")
    return "\n".join(rows)
