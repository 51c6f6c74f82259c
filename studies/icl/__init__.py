"""In-context linear regression with multi-head softmax attention: ``python -m studies.icl SUB``.

Sub-studies (theory notes ``docs/theory/icl_regression.md``; He, Pan, Chen, Yang, ICML 2025), one module each, each a
study of the shared shape (:mod:`studies`: ``STUDY = "icl_<sub>"``, ``DEFAULTS``, ``QUICK``,
``add_arguments``, ``validate``, ``parts``, ``analyze(ds)`` reading the run's stored parameters,
``summary``, ``main``; its figure is ``paper_figs.icl.draw``):

``train``       (:mod:`.train`) one-layer multi-head softmax attention trained by Adam on
                fresh prompts, H x seed runs batched; the emergent patterns and risks against
                the exact finite-L theory of the softmax kernels.
``estimators``  (:mod:`.estimators`) Monte Carlo risks of the closed-form predictors (multi- and
                single-head softmax kernels, GD, debiased GD, ridge = Bayes) against their exact
                finite-L risks, over prompt lengths L.
``ode``         (:mod:`.ode`) the reduced (omega, mu) gradient flow: plateau exit, drop to the
                floor, slow drift along the valley to 2 mu omega = 1/(1 + d(1+sigma2)/L); and
                the same starts trained by plain gradient descent on fresh prompts.
``length``      (:mod:`.length`) the trained models of a finished ``train`` store and a linear-
                attention baseline at test lengths L'.
``noniso``      (:mod:`.noniso`) anisotropic covariates: the learned preconditioner
                sum_h mu_h W_h against Gamma*.
``multitask``   (:mod:`.multitask`) two regression tasks sharing coordinates: per-task debiased
                GD, superposition of heads.

This dispatcher knows none of them by name: the sub-studies are the catalogue entries run by
``studies.icl`` (:data:`studies.catalog.STUDIES`, whose first argument is the sub-study's name),
and what sets them apart is data there -- ``devices=("cpu",)`` for ``ode`` (which integrates a
2H-dimensional ODE with scipy), ``trains`` for train, noniso and multitask, ``reads="icl_train"``
for length. Each gets one subparser, built from its module as every study's parser is
(:func:`studies.cli.build_parser`), and runs through the one flow of every study
(:func:`studies.cli.prepare`, then :func:`studies.cli.run_study`).

Claims (ids ``icl_<sub>.<name>``; the list with sources is each module's docstring): every
prediction comes from :mod:`theory.icl_regression` for the run's own (d, L, sigma2, H, rho,
steps); claims about trained models are "not tested" when training stopped before their stage or
the quantity they are about has not settled at their tolerance (notes icl_regression §13.11).
The reduced ODE against its own closed forms is a consistency check; the ODE's evidence is a pair
trained by gradient descent from the same start (``icl_ode.trained_dynamics``, §5.7).

Training sub-studies (:mod:`._training`) keep their checkpoint inside the store (group
``checkpoint``, rewritten atomically): an interrupted run resumes from it and ends bit for bit
identical to an uninterrupted one; ``--steps`` may be raised on an existing run (the identity
is the run's parameters without ``steps``). Grid sub-studies (estimators, ode, length) use the
resumable sweep runner.

``--device gpu`` (every sub-study whose catalogue entry lists the GPU) runs the numba-cuda twins
of :mod:`gpu.icl_regression`. The device is part of a run's identity; without a usable GPU
``--device gpu`` is a one-line error.
"""
from __future__ import annotations

import argparse
import sys

from studies.catalog import STUDIES
from studies.cli import StudyParser, build_parser as study_parser, prepare, run_main, run_study

__all__ = ["main", "build_parser", "SUBSTUDIES", "PROG"]

PROG = "python -m studies.icl"
RUNNER = "studies.icl"
SUBSTUDIES = tuple(e.args[0] for e in STUDIES if e.runner == RUNNER)
"""The sub-studies' names, in catalogue order."""

EXAMPLES = """\
examples:
  python -m studies.icl train                       # H = 1,2,4,8 x 2 seeds, 60k Adam steps (minutes)
  python -m studies.icl estimators --L 10..100:5    # closed-form predictors, MC vs exact risks (seconds)
  python -m studies.icl ode                         # reduced gradient flow to t = 1e4 (seconds)
  python -m studies.icl length                      # needs results/icl_train.zarr (run train first)
  python -m studies.icl SUB --quick --plot          # any sub-study in seconds, with its figure(s)
  python -m studies.icl SUB --help                  # a sub-study's options
"""


def _short(text: str) -> str:
    """The first sentence of a description (the sub-study's line in the list)."""
    first = text.split(": ")[0].split(". ")[0]
    return first.rstrip(".")


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    """The parser of ``python -m studies.icl`` and ``{sub: (module, its subparser)}``: one
    subparser per sub-study of the catalogue, holding exactly the options of the study's own
    parser (its ``add_arguments``, presets and the shared run-control options)."""
    p = StudyParser(prog=PROG, description="In-context linear regression with multi-head softmax attention "
                                           "(He, Pan, Chen, Yang 2025): training dynamics, emergent patterns, "
                                           "predictors.", epilog=EXAMPLES,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="sub", metavar="SUB", required=True, help="one of: " + ", ".join(SUBSTUDIES),
                           parser_class=StudyParser)
    subs = {}
    for entry in STUDIES:
        if entry.runner != RUNNER:
            continue
        name, module = entry.args[0], entry.load()
        own = study_parser(module, prog=f"{PROG} {name}")
        sp = sub.add_parser(name, parents=[own], add_help=False, help=_short(module.DESCRIPTION),
                            description=module.DESCRIPTION, epilog=module.EXAMPLES,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        subs[name] = (module, sp)
    return p, subs


def _main(argv=None) -> int:
    parser, subs = build_parser()
    args = parser.parse_args(argv)
    module, sp = subs[args.sub]
    prepare(module, sp, args)
    run_study(args, module)
    return 0


def main(argv=None) -> int:
    return run_main(_main, argv, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
