"""What the three groups of the tensor-attention study share: the logit convention, the random
streams, the device tools and the frame of a group's sweep.

Convention (recorded in every group): inputs ``Q, K_m, V_m`` in R^{n x d}; logits
``s sum_l Q_il K_1,j1,l ... K_{k-1},j_{k-1},l`` with scale ``s`` = :data:`SCALES` ``[--scale](d)``;
the softmax is joint over all key tuples; Khatri-Rao rows in numpy order (``j1 n + j2``).

Seed policy. A group is a sweep over replicates (``rep``, one cell each). The cell of replicate
``rep`` draws from ``SeedSequence(root_seed, spawn_key=(rep,))`` (:func:`studies.sweep.cell_seed`)
and its group's inputs from the child stream ``SeedSequence(root_seed, spawn_key=(rep, K))`` with
``K`` = :data:`GROUP_STREAM` ``[group]`` (error 0, runtime 1, match3 2): the streams the three
sections of the earlier one-store layout drew from, so a seed gives the same inputs, hence the same
measurements, and running one group or all of them changes no number.
"""
from __future__ import annotations

import math

import numpy as np

from sim.backend import get_xp, make_rng
from studies.sweep import Sweep

STUDY = "tensor_attention"
GROUPS = ("error", "runtime", "match3")
GROUP_STREAM = {"error": 0, "runtime": 1, "match3": 2}
SCALES = {"1/d": lambda d: 1.0 / d, "1/sqrt(d)": lambda d: 1.0 / math.sqrt(d)}
SOURCE = "Alman & Song 2023 (AS23, k = 2) and 2024 (AS24, k = 3)"
CONVENTION = ("logit = s sum_l Q_il K1_j1,l ... (s = {scale}); softmax joint over all key tuples; Khatri-Rao rows "
              "in numpy order (j1 n + j2)")
STREAM_POLICY = ("replicate rep of group G draws its inputs from SeedSequence(root_seed, spawn_key=(rep, K)), "
                 "K = 0 (error), 1 (runtime), 2 (match3)")


def child_rng(seed: np.random.SeedSequence, group: str):
    """The generator of ``group`` in the cell whose seed is ``seed`` (see the seed policy above)."""
    return make_rng(np.random.SeedSequence(seed.entropy, spawn_key=tuple(seed.spawn_key) + (GROUP_STREAM[group],)))


def device_tools(device):
    """``(to_device, sync)`` for the run's device: the identity and a no-op on the CPU; on the
    GPU, a host-to-device copy (CuPy) and a device synchronisation (for honest timings)."""
    if device != "gpu":
        return (lambda X: X), (lambda: None)
    cp = get_xp("gpu")
    return cp.asarray, (lambda: cp.cuda.Device().synchronize())


def group_sweep(group: str, args, *, own: dict, variables: dict, coords: dict, run_cell, var_attrs: dict,
                attrs: dict, gpu_engines: str) -> Sweep:
    """The sweep of one group over ``--reps`` replicates. Its stored parameters are those every
    group shares (``d``, ``scale``, ``reps``; ``device`` on a GPU) and the group's own under its
    name (``own``), which its analysis reads back from the store."""
    params = {"group": group, "d": args.d, "scale": args.scale, "reps": args.reps, group: own}
    extra = {}
    if args.device == "gpu":
        # GPU numbers differ (rounding, timings): a GPU run never resumes a CPU store, or the reverse
        params["device"] = "gpu"
        extra["gpu_engines"] = gpu_engines
    return Sweep(study=f"{STUDY}/{group}", cell_dims={"rep": np.arange(args.reps)}, variables=variables,
                 coords=coords, params=params, run_cell=run_cell, root_seed=args.seed,
                 attrs={"group": group, "device": args.device, "convention": CONVENTION.format(scale=args.scale),
                        "stream_policy": STREAM_POLICY, **attrs, **extra},
                 var_attrs=var_attrs)
