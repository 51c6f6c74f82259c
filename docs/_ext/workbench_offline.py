"""What keeps the workbench's documentation build offline and safe to import.

* **Local MathJax.** ``mathjax_path`` (``conf.py``) names ``mathjax/tex-chtml.js`` under
  ``_static/``; this extension copies MathJax 3.2.2's es5 build there from the
  ``django-static-mathjax`` wheel (``mathjax/static/mathjax/es5/``), located with
  :func:`importlib.util.find_spec` so neither Django nor the wheel's ``__init__`` is imported.
  Only what ``tex-chtml.js`` loads is copied: the component itself, the CHTML fonts, the TeX
  extensions it autoloads and the accessibility/menu components the MathJax menu asks for.
* **No network.** The configuration is checked when the build starts: a ``mathjax_path`` that is a
  URL, ``sphinx.ext.intersphinx``, or a gallery with Binder/JupyterLite badges stops the build.
* **Entry points are not run.** Recursive autosummary imports every submodule of a package to list
  them, and ``studies/icl/__main__.py`` or ``studies/random_features/__main__.py`` run a study
  when imported. Each ``__main__`` module of the documented packages is registered in
  ``sys.modules`` as an empty stub before autosummary walks them (private names are not documented
  anyway).
* **Public API only.** A module with ``__all__`` documents the names in it and nothing else
  (``autosummary_ignore_module_all = True`` lists what a module defines; this filter drops what
  ``__all__`` leaves out), through the ``autodoc-skip-member`` event.
"""
from __future__ import annotations

import importlib.util
import shutil
import sys
import types
from pathlib import Path

from sphinx.application import Sphinx
from sphinx.errors import ConfigError, ExtensionError
from sphinx.util import logging

logger = logging.getLogger(__name__)

PACKAGES = ("theory", "sim", "studies", "paper_figs", "gpu")
ROOT = Path(__file__).resolve().parents[2]

# what tex-chtml.js needs (relative to the es5 folder); the rest of the 24 MB build is left out
MATHJAX_FILES = ("tex-chtml.js",)
MATHJAX_DIRS = ("output/chtml", "input/tex/extensions", "ui", "a11y", "sre", "adaptors")


def mathjax_es5() -> Path:
    """The es5 folder of MathJax 3 shipped by the ``django-static-mathjax`` wheel."""
    spec = importlib.util.find_spec("mathjax")
    if spec is None or not spec.submodule_search_locations:
        raise ExtensionError("MathJax is missing: pip install django-static-mathjax "
                             "(or pip install -e '.[docs]'); the docs never load it from a CDN")
    for base in spec.submodule_search_locations:
        es5 = Path(base) / "static" / "mathjax" / "es5"
        if (es5 / "tex-chtml.js").is_file():
            return es5
    raise ExtensionError(f"no static/mathjax/es5/tex-chtml.js under {list(spec.submodule_search_locations)}: "
                         "is the installed 'mathjax' package django-static-mathjax?")


def _check_offline(app: Sphinx, config) -> None:
    path = str(config.mathjax_path or "")
    if "://" in path or path.startswith("//"):
        raise ConfigError(f"mathjax_path {path!r} is a URL: the docs load MathJax from _static only")
    if "sphinx.ext.intersphinx" in config.extensions:
        raise ConfigError("intersphinx fetches inventories over the network: the docs build offline")
    sg = getattr(config, "sphinx_gallery_conf", {}) or {}
    if sg.get("binder") or sg.get("jupyterlite"):
        raise ConfigError("sphinx_gallery_conf: Binder/JupyterLite badges link out of the machine")
    mathjax_es5()  # fail early, before anything is built


def _stub_entry_points() -> None:
    """Register every ``__main__`` module of our packages as an empty module."""
    for pkg in PACKAGES:
        for main in sorted((ROOT / pkg).rglob("__main__.py")):
            name = ".".join(main.relative_to(ROOT).with_suffix("").parts)
            if name not in sys.modules:
                stub = types.ModuleType(name, "Command-line entry point (not imported by the docs build).")
                stub.__file__ = str(main)
                sys.modules[name] = stub


def _public_only(app, what, name, obj, skip, options):
    """Skip a module-level function or class that its module's ``__all__`` leaves out."""
    if what not in ("function", "class", "exception", "decorator"):
        return None
    modname = getattr(obj, "__module__", None)
    if not modname or modname.split(".", 1)[0] not in PACKAGES:
        return None
    module = sys.modules.get(modname)
    public = getattr(module, "__all__", None)
    if public is None or getattr(obj, "__qualname__", name) != name:
        return None
    return True if name not in public else None


def _copy_mathjax(app: Sphinx, exc) -> None:
    if exc is not None or app.builder.format != "html":
        return
    src = mathjax_es5()
    dest = Path(app.outdir) / "_static" / "mathjax"
    dest.mkdir(parents=True, exist_ok=True)
    for name in MATHJAX_FILES:
        shutil.copy2(src / name, dest / name)
    for sub in MATHJAX_DIRS:
        if (src / sub).is_dir():
            shutil.copytree(src / sub, dest / sub, dirs_exist_ok=True)
    logger.info("copied MathJax %s to %s", src, dest)


def setup(app: Sphinx):
    app.setup_extension("sphinx.ext.autodoc")  # defines the autodoc-skip-member event
    app.setup_extension("sphinx.ext.mathjax")  # defines mathjax_path
    _stub_entry_points()
    app.connect("config-inited", _check_offline)
    app.connect("autodoc-skip-member", _public_only)
    app.connect("build-finished", _copy_mathjax)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
