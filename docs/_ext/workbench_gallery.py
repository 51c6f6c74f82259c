"""The gallery's order: the API tour first, then one example per study in catalogue order."""
from pathlib import Path


class CatalogueOrder:
    """A sphinx-gallery sort key (named by its import path in ``conf.py``, so the build
    environment can be pickled): ``plot_api_tour.py`` first, then ``plot_<study>.py`` in the
    order of :data:`studies.catalog.STUDIES`, anything else after them by name."""

    def __init__(self, src_dir):
        self.src_dir = src_dir

    def __call__(self, filename):
        from studies.catalog import STUDIES

        order = ["api_tour"] + [e.name for e in STUDIES]
        stem = Path(filename).stem.removeprefix("plot_")
        return (order.index(stem) if stem in order else len(order), stem)
