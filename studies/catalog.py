"""The catalogue: the only list of the workbench's studies, each with its capabilities as data.

One :class:`Entry` per study (a subcommand of ``studies.icl`` is a study of its own). Everything
that iterates over studies iterates this tuple: ``python -m studies.report`` (which runs them and
gathers their claims), ``python -m studies.reanalyze`` (which finds a store's study by its
stored name), the shared run flow (:func:`studies.cli.prepare` reads ``devices``,
:func:`studies.cli.add_common_arguments` adds ``--parts`` when a study has ``groups``), the
contract checks (:mod:`studies.checks`, which decide what applies from the capabilities, never
from a name), the bad-input table and the report's tests.

Fields of an entry:

==================  ===========================================================================
``name``            the study's name: its store is ``<results>/<name>.zarr``; equal to the
                    module's ``STUDY``
``module``          the module that has the study shape (:mod:`studies`): ``DEFAULTS``,
                    ``parts``, ``analyze``, ...
``thread``          the paper (thread) whose claims it tests (:data:`PAPERS`)
``figure``          the module whose ``draw(store, out) -> list[Path]`` draws it
``command``         the module run by ``python -m`` (``studies.icl`` for its subcommands;
                    default ``module``), with ``args`` before the options
``quick_args``      extra arguments of its ``--quick`` run in the report
``groups``          the store groups of a study of several parts, selected by ``--parts``
``executor``        takes the shared ``--workers``/``--dask-local``/``--scheduler`` options
``workers``         worker processes of a full CPU run when ``--workers`` is not given (1:
                    in-process; ``--quick``, Dask and GPU runs use 1)
``trains``          trains a model (checkpoints inside the store; ``--steps`` may grow)
``reads``           the study whose store it reads (``--models``), run first by the report
``needs``           optional requirements (:data:`REQUIREMENTS`), e.g. the encoder's weights
``devices``         the devices it runs on (``cpu``, ``gpu``)
``quick``           has a ``--quick`` mode
``default_s``,      measured wall time of the default / quick run on a quiet 2-core machine
``quick_s``         (README table), used by the report to estimate how long it has left
==================  ===========================================================================

Adding a study is its module in ``studies/``, its figure module in ``paper_figs/`` and one line
here.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Entry", "PAPERS", "REQUIREMENTS", "STUDIES", "by_name", "requirement_met"]

PAPERS = {
    "token_sample": "Bohbot, Letrouit, Peyré, Vialard — Token Sample Complexity of Attention (ICML 2026)",
    "random_features": "Fu, Guo, Bai, Mei — What can a single attention layer learn? (NeurIPS 2023)",
    "icl_regression": "He, Pan, Chen, Yang — In-context linear regression demystified (ICML 2025)",
    "tensor_attention": "Alman & Song — Fast attention requires bounded entries (2023); "
                        "How to capture higher-order correlations? (ICLR 2024)",
    "token_selection": "Attention over m of n keys (sampling, top-k, hybrids) against the token-sample theory",
}

# requirement -> "module:function" returning (available, why not)
REQUIREMENTS = {"encoder": "sim.encoder:encoder_available"}


@dataclass(frozen=True)
class Entry:
    name: str
    module: str
    thread: str
    figure: str
    command: str = ""
    args: tuple = ()
    quick_args: tuple = ()
    groups: tuple = ()
    executor: bool = True
    workers: int = 1
    trains: bool = False
    reads: str | None = None
    needs: tuple = ()
    devices: tuple = ("cpu", "gpu")
    quick: bool = True
    default_s: float = 60.0
    quick_s: float = 10.0

    @property
    def paper(self) -> str:
        return PAPERS[self.thread]

    @property
    def runner(self) -> str:
        """The module ``python -m`` runs."""
        return self.command or self.module

    @property
    def models_from(self) -> str | None:
        return self.reads

    def load(self):
        """The study module (the study shape)."""
        return importlib.import_module(self.module)

    def main(self, argv) -> int:
        """Run the study in this process: ``python -m RUNNER ARGS argv``."""
        return importlib.import_module(self.runner).main([*self.args, *argv])

    def argv(self, results, *, quick: bool) -> list[str]:
        """The command line (after ``python -m RUNNER``) that writes this study's store in the
        folder ``results`` (and reads there the store it needs)."""
        argv = [*self.args, *(self.quick_args if quick else ())]
        if quick:
            argv.append("--quick")
        if self.reads:
            argv += ["--models", str(Path(results) / f"{self.reads}.zarr")]
        return argv + ["--out", str(Path(results) / f"{self.name}.zarr")]


STUDIES: tuple[Entry, ...] = (
    Entry("convergence", "studies.convergence", "token_sample", "paper_figs.convergence", args=("--R", "1..8"),
          default_s=34, quick_s=6),
    Entry("moments", "studies.moments", "token_sample", "paper_figs.moments", default_s=102, quick_s=1),
    Entry("hardmax", "studies.hardmax", "token_sample", "paper_figs.hardmax", default_s=29, quick_s=1),
    Entry("tails", "studies.tails", "token_sample", "paper_figs.tails", groups=("sup", "moments"),
          default_s=49, quick_s=4),
    Entry("random_features", "studies.random_features", "random_features", "paper_figs.random_features",
          groups=("kernel", "rate", "families", "N", "bias"), workers=2, default_s=44, quick_s=4),
    Entry("tensor_attention", "studies.tensor_attention", "tensor_attention", "paper_figs.tensor_attention",
          groups=("error", "runtime", "match3"), default_s=92, quick_s=2),
    Entry("icl_train", "studies.icl.train", "icl_regression", "paper_figs.icl", command="studies.icl",
          args=("train",), executor=False, trains=True, default_s=204, quick_s=2),
    Entry("icl_estimators", "studies.icl.estimators", "icl_regression", "paper_figs.icl", command="studies.icl",
          args=("estimators",), default_s=23, quick_s=1),
    Entry("icl_ode", "studies.icl.ode", "icl_regression", "paper_figs.icl", command="studies.icl", args=("ode",),
          devices=("cpu",), default_s=8, quick_s=6),
    Entry("icl_length", "studies.icl.length", "icl_regression", "paper_figs.icl", command="studies.icl",
          args=("length",), reads="icl_train", default_s=25, quick_s=1),
    Entry("icl_noniso", "studies.icl.noniso", "icl_regression", "paper_figs.icl", command="studies.icl",
          args=("noniso",), executor=False, trains=True, default_s=104, quick_s=1),
    Entry("icl_multitask", "studies.icl.multitask", "icl_regression", "paper_figs.icl", command="studies.icl",
          args=("multitask",), executor=False, trains=True, default_s=48, quick_s=1),
    Entry("encoder", "studies.encoder", "token_sample", "paper_figs.encoder", needs=("encoder",),
          default_s=59, quick_s=6),
    Entry("token_selection", "studies.token_selection", "token_selection", "paper_figs.token_selection",
          groups=("budget", "phase", "vattention", "coverage", "minilm"), devices=("cpu",), default_s=61, quick_s=8),
)


def by_name(name: str) -> Entry:
    """The catalogue entry of the study ``name`` (its store's ``study`` attribute; a group's
    ``study/group`` names its study too)."""
    name = str(name).partition("/")[0]
    for e in STUDIES:
        if e.name == name:
            return e
    raise KeyError(name)


def requirement_met(entry: Entry) -> tuple[bool, str]:
    """Whether this machine has what ``entry.needs`` (``(True, "")``, or ``(False, why)``)."""
    for need in entry.needs:
        module, _, func = REQUIREMENTS[need].partition(":")
        ok, why = getattr(importlib.import_module(module), func)()
        if not ok:
            return False, why
    return True, ""
