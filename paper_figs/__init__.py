"""Figures: one module per study, dataset -> figure, recomputing nothing.

Each ``paper_figs.NAME`` defines ``draw(store, out=None, dpi=...) -> list[Path]`` (the files it
wrote; ``out`` defaults to the store's path with a ``.png`` suffix) and a command line
``python -m paper_figs.NAME STORE [--out FIG]`` built by :func:`paper_figs._common.figure_main`.
Figures read the store through :func:`paper_figs._common.open_store` and import nothing else of
the workbench.
"""
