"""Sphinx configuration of the workbench's documentation site.

Build (offline, warnings as errors; about 40 s of CPU, 1 to 2 minutes on a busy 2-core machine)::

    python -m pip install -e ".[docs]"
    sphinx-build -W --keep-going -b html docs docs/_build/html

What the build needs and never fetches:

* maths: MathJax 3.2.2 (es5) from the ``django-static-mathjax`` wheel, found with importlib
  (Django itself is never imported) and copied into ``_static/mathjax/`` (:mod:`workbench_offline`);
* no intersphinx, no CDN: the theme (furo) ships its own CSS/JS and uses system fonts, and
  sphinx-gallery's Binder/JupyterLite badges stay off; ``tests/docs/test_docs.py`` opens the built
  site in headless Chromium and fails on any request that is not ``file:`` or ``data:``;
* GPU: ``cupy``/``cupyx`` and ``numba.cuda`` are mocked, so ``gpu/`` imports without CUDA;
* generated at build time (ignored by git, see ``docs/.gitignore``): ``api/generated/``
  (recursive autosummary), ``auto_examples/`` (sphinx-gallery from ``examples/``) and the study
  catalogue's tables (:mod:`workbench_catalogue`, from :mod:`studies.catalog`);
* every warning fails the build (``-W``), docstrings included: they are valid reST and numpydoc.

Quicker builds, e.g. while writing pages: ``WORKBENCH_DOCS_API=studies.claims,theory.token_sample``
documents only the listed modules instead of the whole API (:mod:`workbench_api`), and
``WORKBENCH_DOCS_GALLERY=0`` does not run the gallery's examples. The tests build the whole site
with ``WORKBENCH_DOCS_RERUN=1``, which runs every example even when its output is cached from an
earlier build.
"""
from __future__ import annotations

import importlib
import logging
import os
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(DOCS / "_ext"))
os.environ.setdefault("MPLBACKEND", "Agg")
# furo's accessible-pygments sets the root logger to INFO when it is imported, which prints the
# examples' third-party INFO messages into the build log: import it first, then put the level back
try:
    importlib.import_module("a11y_pygments")
except ImportError:
    pass
logging.getLogger().setLevel(logging.WARNING)

_API = os.environ.get("WORKBENCH_DOCS_API", "1").strip()
API_MODULES = [] if _API in ("", "1") else [m.strip() for m in _API.split(",") if m.strip()]
API = not API_MODULES  # the full reference
GALLERY = os.environ.get("WORKBENCH_DOCS_GALLERY", "1") != "0"

# -- project -----------------------------------------------------------------------------------
project = "attention-workbench"
author = "the attention-workbench contributors"
copyright = "the attention-workbench contributors (MIT)"  # noqa: A001
try:
    from importlib.metadata import version as _version

    release = _version("attention-workbench")
except Exception:  # not installed: read from the source tree
    release = "0.1.0"
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
    "workbench_api",  # WORKBENCH_DOCS_API=mod,...: a quick reference of a few modules
    "workbench_offline",  # local MathJax, __main__ guards, public-API filter
    "workbench_catalogue",  # the study catalogue's tables, generated from studies.catalog
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
exclude_patterns += ["api/generated-quick/**"] if API else ["api/generated/**"]
templates_path = ["_templates"]
nitpicky = False

# -- MyST: the theory notes are MyST Markdown with $...$ maths and (label)= anchors --------------
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist", "attrs_inline"]
myst_dmath_double_inline = True

# -- maths: local MathJax, never a CDN --------------------------------------------------------
mathjax_path = "mathjax/tex-chtml.js"  # relative to _static/, copied by workbench_offline

# -- API reference: recursive autosummary + numpydoc --------------------------------------------
autosummary_generate = API
workbench_api_modules = API_MODULES
autosummary_generate_overwrite = True
autosummary_imported_members = False
autosummary_ignore_module_all = True  # members where they are defined; __all__ filters them (workbench_offline)
autodoc_default_options = {"members": False, "show-inheritance": False}
autodoc_typehints = "none"  # numpydoc renders the signature; hints stay in the source
autodoc_member_order = "bysource"
autodoc_mock_imports = ["cupy", "cupyx", "numba.cuda"]
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_validation_checks: set[str] = set()
numpydoc_xref_param_type = False
numpydoc_attributes_as_param_list = False

# -- gallery ------------------------------------------------------------------------------------
sphinx_gallery_conf = {
    "examples_dirs": [str(ROOT / "examples")],
    "gallery_dirs": ["auto_examples"],
    "filename_pattern": r"/plot_",
    "plot_gallery": "True" if GALLERY else "False",
    "abort_on_example_error": True,
    # WORKBENCH_DOCS_RERUN=1 runs every example even when its output is cached (the tests do)
    "run_stale_examples": os.environ.get("WORKBENCH_DOCS_RERUN", "0") == "1",
    "only_warn_on_example_error": False,
    "download_all_examples": True,
    "remove_config_comments": True,
    "within_subsection_order": "workbench_gallery.CatalogueOrder",
    "backreferences_dir": None,
    "doc_module": (),
    "reference_url": {},
    "show_memory": False,
    "show_signature": False,
    "show_api_usage": False,
    "matplotlib_animations": False,
    "image_scrapers": ("matplotlib",),
    "capture_repr": ("_repr_html_", "__repr__"),
    "first_notebook_cell": None,
    "min_reported_time": 1e9,
    "write_computation_times": False,
}

# -- HTML ---------------------------------------------------------------------------------------
html_theme = "furo"
html_title = "attention-workbench"
html_static_path: list[str] = []  # MathJax is copied by workbench_offline; the theme ships the rest
html_theme_options = {
    "navigation_with_keys": True,
    "top_of_page_buttons": [],
    "footer_icons": [],
}
html_show_sourcelink = False
html_copy_source = False
html_last_updated_fmt = None
html_use_index = True
