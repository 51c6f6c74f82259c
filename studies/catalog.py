"""The catalogue of every study: what to run, where it stores, which paper it tests.

One :class:`Entry` per study (a subcommand of ``studies.icl`` is a study of its own):
``name`` (also the store's file name, ``<results>/<name>.zarr``), the module and the arguments
that run it, the paper (thread) whose claims it tests, the figure module, whether it takes the
shared executor options (``--workers``/``--dask-local``/``--scheduler``), the study whose
trained models it reads (``models_from``) and its measured default wall time on a quiet 2-core machine
(README table), used to estimate how long a report still has to run.

Used by ``python -m studies.report`` and by the study-contract test.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Entry", "PAPERS", "STUDIES", "by_name"]

PAPERS = {
    "token_sample": "Bohbot, Letrouit, Peyré, Vialard — Token Sample Complexity of Attention (ICML 2026)",
    "random_features": "Fu, Guo, Bai, Mei — What can a single attention layer learn? (NeurIPS 2023)",
    "icl_regression": "He, Pan, Chen, Yang — In-context linear regression demystified (ICML 2025)",
    "tensor_attention": "Alman & Song — Fast attention requires bounded entries (2023); "
                        "How to capture higher-order correlations? (ICLR 2024)",
}


@dataclass(frozen=True)
class Entry:
    name: str
    module: str
    thread: str
    figure: str
    args: tuple = ()
    quick_args: tuple = ()
    executor: bool = True
    models_from: str | None = None
    default_s: float = 60.0
    quick_s: float = 10.0

    @property
    def paper(self) -> str:
        return PAPERS[self.thread]

    def argv(self, results, *, quick: bool) -> list[str]:
        """The command line (after ``python -m MODULE``) that writes this study's store in the
        folder ``results`` (and reads there the store it needs)."""
        from pathlib import Path

        argv = [*self.args, *(self.quick_args if quick else ())]
        if quick:
            argv.append("--quick")
        if self.models_from:
            argv += ["--models", str(Path(results) / f"{self.models_from}.zarr")]
        return argv + ["--out", str(Path(results) / f"{self.name}.zarr")]


STUDIES: tuple[Entry, ...] = (
    Entry("convergence", "studies.convergence", "token_sample", "paper_figs.convergence", args=("--R", "1..8"),
          default_s=18, quick_s=3),
    Entry("moments", "studies.moments", "token_sample", "paper_figs.moments", default_s=75, quick_s=1),
    Entry("hardmax", "studies.hardmax", "token_sample", "paper_figs.hardmax", default_s=18, quick_s=1),
    Entry("tails", "studies.tails", "token_sample", "paper_figs.tails", default_s=30, quick_s=2),
    Entry("random_features", "studies.random_features", "random_features", "paper_figs.random_features",
          default_s=18, quick_s=2),
    Entry("tensor_attention", "studies.tensor_attention", "tensor_attention", "paper_figs.tensor_attention",
          default_s=67, quick_s=1),
    Entry("icl_train", "studies.icl", "icl_regression", "paper_figs.icl", args=("train",), executor=False,
          default_s=162, quick_s=1),
    Entry("icl_estimators", "studies.icl", "icl_regression", "paper_figs.icl", args=("estimators",),
          default_s=16, quick_s=1),
    Entry("icl_ode", "studies.icl", "icl_regression", "paper_figs.icl", args=("ode",), default_s=1, quick_s=1),
    Entry("icl_length", "studies.icl", "icl_regression", "paper_figs.icl", args=("length",),
          models_from="icl_train", default_s=21, quick_s=1),
    Entry("icl_noniso", "studies.icl", "icl_regression", "paper_figs.icl", args=("noniso",), executor=False,
          default_s=81, quick_s=1),
    Entry("icl_multitask", "studies.icl", "icl_regression", "paper_figs.icl", args=("multitask",), executor=False,
          default_s=29, quick_s=1),
    Entry("encoder", "studies.encoder", "token_sample", "paper_figs.encoder", default_s=32, quick_s=4),
)


def by_name(name: str) -> Entry:
    for e in STUDIES:
        if e.name == name:
            return e
    raise KeyError(name)
