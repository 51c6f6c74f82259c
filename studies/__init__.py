"""The studies: one command line per study, ``python -m studies.NAME``.

The study contract
------------------
Every study -- a single sweep, a store of several sub-sweeps, or a command with subcommands
(``studies.icl``) -- runs through the same plumbing, and a module holds only what is its own:

1. **Parse** (:mod:`studies.cli`): a :class:`~studies.cli.StudyParser` with the study's own
   options (left at ``None`` when they have a default), then
   :func:`~studies.cli.add_common_arguments` (``--seed --out --overwrite --workers --dask-local
   --scheduler --device --quick --plot --no-progress``).
2. **Validate**: :func:`~studies.cli.apply_defaults` fills the options from the study's
   ``DEFAULTS`` and ``QUICK`` tables (written in command-line syntax and parsed by the option's
   own parser); the study's own checks raise :class:`~studies.cli.UsageError`; then
   :func:`~studies.cli.validate_run_options` checks the shared options (device, ``--out``,
   executor).
3. **Sweep** (:mod:`studies.sweep`): each part of the store is a :class:`~studies.sweep.Sweep`
   (a grid of independent, seeded cells; resumable) or, for work that is not a grid (a training
   run), a ``run(path, args, executor)`` callable that opens its store through the same
   identity check (:func:`~studies.sweep.open_store`) and provenance writer
   (:func:`~studies.sweep.provenance`) and keeps its checkpoints inside the store.
4. **Analyse**: ``analyze(ds) -> (analysis, claims)``, a pure function of the stored data and
   the run's parameters: fits and ``theory_*`` variables, and the study's claims
   (:mod:`studies.claims`) -- predictions computed by ``theory/`` for this run's configuration,
   each ``holds``, ``fails`` or ``not tested`` with the reason.
5. **Summarise**: ``summary(analysis) -> str`` prints the study's own table;
   :func:`studies.claims.format_claims` prints the claims in the one format shared by all.
6. **Draw**: ``paper_figs.NAME.draw(store, out=None) -> list[Path]`` reads the store and
   nothing else.

:func:`~studies.cli.run_study` strings 3-6 together for a list of
:class:`~studies.cli.Part` (one per group of the store), and :func:`~studies.cli.run_main`
turns usage errors into one line and exit status 2. A new study is therefore one module here
(parser, ``DEFAULTS``/``QUICK``, cell function, ``make_sweep``, ``analyze``, ``summary``, a
``main`` calling ``run_study``) plus one figure module in ``paper_figs/``; its claims are
gathered by :func:`studies.claims.read_claims` like every other study's.
"""
