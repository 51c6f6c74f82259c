"""In-context linear regression with multi-head softmax attention: ``python -m studies.icl SUB``.

Sub-studies (spec ``icl_regression``; He, Pan, Chen, Yang, ICML 2025), one module each, each a
study of the shared contract (:mod:`studies`: ``apply_defaults`` / ``validate_run_options`` /
``run_study`` with one :class:`~studies.cli.Part`; ``analyze(ds) -> (analysis, claims)``;
``paper_figs.icl.draw``):

``train``       (:mod:`.train`) one-layer multi-head softmax attention trained by Adam on
                fresh prompts, H x seed runs batched; the emergent patterns and risks against
                the exact finite-L theory of the softmax kernels.
``estimators``  (:mod:`.estimators`) Monte Carlo risks of the closed-form predictors (multi- and
                single-head softmax kernels, GD, debiased GD, ridge = Bayes) against their exact
                finite-L risks, over prompt lengths L.
``ode``         (:mod:`.ode`) the reduced (omega, mu) gradient flow: plateau exit, drop to the
                floor, slow drift along the valley to 2 mu omega = 1/(1 + d(1+sigma2)/L).
``length``      (:mod:`.length`) the trained models of a finished ``train`` store and a linear-
                attention baseline at test lengths L'.
``noniso``      (:mod:`.noniso`) anisotropic covariates: the learned preconditioner
                sum_h mu_h W_h against Gamma*.
``multitask``   (:mod:`.multitask`) two regression tasks sharing coordinates: per-task debiased
                GD, superposition of heads.

Claims (ids ``icl_<sub>.<name>``; the list with sources is each module's docstring): every
prediction comes from :mod:`theory.icl_regression` for the run's own (d, L, sigma2, H, rho,
steps); claims about trained models are "not tested" when training stopped before their stage.

Training sub-studies (:mod:`._training`) keep their checkpoint inside the store (group
``checkpoint``, rewritten atomically): an interrupted run resumes from it and ends bit for bit
identical to an uninterrupted one; ``--steps`` may be raised on an existing run (the identity
is the run's parameters without ``steps``). Grid sub-studies (estimators, ode, length) use the
resumable sweep runner.

``--device gpu`` (train, noniso, multitask, length, estimators) runs the numba-cuda twins of
:mod:`gpu.icl_regression`; ``ode`` integrates a 2H-dimensional ODE with scipy and refuses it.
The device is part of a run's identity; without a usable GPU ``--device gpu`` is a one-line
error.
"""
from __future__ import annotations

import argparse
import sys

from studies.cli import (StudyParser, UsageError, add_common_arguments, apply_defaults, run_main, run_study,
                         validate_run_options)
from studies.icl import _common as C
from studies.icl import estimators, length, multitask, noniso, ode, train
from studies.icl._training import TRAIN_DEFAULTS, TRAIN_QUICK, validate_training, validate_training_device
from studies.icl.estimators import ESTIMATORS, analyze_estimators
from studies.icl.length import analyze_length
from studies.icl.multitask import analyze_multitask
from studies.icl.noniso import analyze_noniso
from studies.icl.ode import analyze_ode, ode_times
from studies.icl.train import analyze_train

__all__ = ["main", "build_parser", "SUBSTUDIES", "ESTIMATORS", "analyze_train", "analyze_estimators", "analyze_ode",
           "analyze_length", "analyze_noniso", "analyze_multitask", "ode_times"]

PROG = C.PROG
MODULES = {"train": train, "estimators": estimators, "ode": ode, "length": length, "noniso": noniso,
           "multitask": multitask}
SUBSTUDIES = tuple(MODULES)
TRAINING = ("train", "noniso", "multitask")

EXAMPLES = """\
examples:
  python -m studies.icl train                       # H = 1,2,4,8 x 2 seeds, 60k Adam steps (minutes)
  python -m studies.icl train --steps 500000        # the paper's length (continues the same run)
  python -m studies.icl estimators --L 10..100:5    # closed-form predictors, MC vs exact risks (seconds)
  python -m studies.icl ode                         # reduced gradient flow to t = 1e4 (seconds)
  python -m studies.icl length                      # needs results/icl_train.zarr (run train first)
  python -m studies.icl noniso --rho 0,0.5,0.8      # learned preconditioner vs Gamma*
  python -m studies.icl multitask --H 3,4           # superposition of two tasks
  python -m studies.icl SUB --quick --plot          # any sub-study in seconds, with its figure(s)
  python -m studies.icl train --device gpu --H 1,2,4,8 --seeds 3 --steps 500000   # on a CUDA GPU
"""


def build_parser() -> argparse.ArgumentParser:
    p = StudyParser(prog=PROG, description="In-context linear regression with multi-head softmax attention "
                                           "(He, Pan, Chen, Yang 2025): training dynamics, emergent patterns, "
                                           "predictors.", epilog=EXAMPLES,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="sub", metavar="SUB", required=True, help="one of: " + ", ".join(SUBSTUDIES),
                           parser_class=StudyParser)
    for name, mod in MODULES.items():
        sp = mod.add_parser(sub, add_common_arguments)
        sp.formatter_class = argparse.RawDescriptionHelpFormatter
    return p


def _defaults(mod, name):
    d = {**(TRAIN_DEFAULTS if name in TRAINING else {}), **mod.DEFAULTS}
    q = {**(TRAIN_QUICK if name in TRAINING else {}), **mod.QUICK}
    return d, q


def validate(args) -> None:
    """Defaults (:func:`studies.cli.apply_defaults`), the sub-study's own checks, then the
    shared run options (:func:`studies.cli.validate_run_options`)."""
    mod = MODULES[args.sub]
    defaults, quick = _defaults(mod, args.sub)
    apply_defaults(args, defaults, quick, {"H": C.ints, "L": C.ints, "L_test": C.ints, "rho": C.floats})
    if args.sub == "ode" and args.device == "gpu":
        raise UsageError("ode: the reduced (omega, mu) ODE is integrated by scipy on the CPU; --device gpu does "
                         "not apply")
    mod.validate(args)
    if args.sub in TRAINING:
        validate_training(args, mod.token_dim(args))
    validate_run_options(args)
    if args.sub == "ode":
        args.device = "cpu"  # --device auto
    if args.device == "gpu" and args.sub in ("estimators", "length") and (
            args.workers > 1 or args.dask_local or args.scheduler):
        raise UsageError("--device gpu runs the cells in this process (the GPU's owner); "
                         "drop --workers / --dask-local / --scheduler")
    if args.sub in TRAINING:
        D = mod.token_dim(args)
        validate_training_device(args, D, D - args.d)


def _main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    validate(args)
    from paper_figs.icl import draw

    run_study(args, MODULES[args.sub].part(args), draw, study=f"icl_{args.sub}")
    return 0


def main(argv=None) -> int:
    return run_main(_main, argv, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
