"""The studies: one command line per study, ``python -m studies.NAME``.

The study shape
---------------
Every study -- a single sweep, a store of several groups, or a subcommand of ``studies.icl`` --
is a module with the same names (:data:`SHAPE`), and the shared plumbing does the rest:

==================  ===========================================================================
``STUDY``           its name: the store ``results/<STUDY>.zarr`` and its catalogue line
                    (:mod:`studies.catalog`, the only list of studies, which also holds the
                    study's capabilities as data: groups, devices, trains, reads, needs)
``DESCRIPTION``,    the ``--help`` text
``EXAMPLES``
``DEFAULTS``,       its options' defaults and their ``--quick`` values, written in command-line
``QUICK``           syntax and parsed by the options' own parsers
``PRESETS``         named sets of defaults, ``{name: (defaults, quick, description)}``, chosen
                    by ``--preset`` (``{}`` for none)
``add_arguments``   ``add_arguments(parser)``: its own options (left at ``None`` when they have a
                    default); the shared ones (``--seed --out --parts --workers --device
                    --quick --plot`` ...) are added by :func:`studies.cli.add_common_arguments`
``validate``        ``validate(args)``: its own checks after the defaults are applied and the
                    device resolved (scores, sizes, memory and work estimated before anything
                    is created); raises :class:`studies.cli.UsageError`
``parts``           ``parts(args) -> list[Part]``: one :class:`studies.cli.Part` per store group
                    (a :class:`studies.sweep.Sweep`, or a ``run`` callable for a training run)
``analyze``         ``analyze(ds) -> (analysis, claims)``: fits, ``theory_*`` variables and the
                    claims (:mod:`studies.claims`), a pure function of the stored dataset: every
                    parameter it needs is read from the store (:func:`studies.cli.run_params`),
                    never from the command line, so any finished store re-derives its claims
                    (``python -m studies.reanalyze STORE``)
``summary``         ``summary(analysis) -> str``: its own table, printed before the claims
``main``            ``main(argv=None) -> int``: ``studies.cli.study_main(this module, argv)``
==================  ===========================================================================

and its figure module ``paper_figs.NAME`` has ``draw(store, out=None) -> list[Path]``, which reads
the store and nothing else. A study of several groups tells them apart in ``analyze`` and
``summary`` by the stored name (:func:`studies.cli.group_of`); one flag, ``--parts``, selects
groups wherever a study has several.

The run is the same for every study (:func:`studies.cli.study_main`): parse
(:func:`~studies.cli.build_parser`), fill defaults, resolve the device, validate
(:func:`~studies.cli.prepare`), then :func:`~studies.cli.run_study` runs each part into its store
(resuming what is there), analyses it, stores analysis and claims next to the data, prints the
summary and the claims in the one format of :func:`studies.claims.format_claims`, and draws the
figure with ``--plot``. Usage errors are one line and exit status 2.

Adding a study is its module here, its figure module in ``paper_figs/`` and one line in
:data:`studies.catalog.STUDIES`; the contract checks (:mod:`studies.checks`) then run on it like on
every other study.
"""

SHAPE = ("STUDY", "DESCRIPTION", "EXAMPLES", "DEFAULTS", "QUICK", "PRESETS", "add_arguments", "validate", "parts",
         "analyze", "summary", "main")
"""The names every study module exports (see above)."""

CALLABLES = ("add_arguments", "validate", "parts", "analyze", "summary", "main")


def missing_names(module) -> list[str]:
    """The names of :data:`SHAPE` that ``module`` lacks (or has in the wrong form)."""
    out = [name for name in SHAPE if not hasattr(module, name)]
    out += [name for name in CALLABLES if hasattr(module, name) and not callable(getattr(module, name))]
    return out
