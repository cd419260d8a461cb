"""Sphinx configuration of memroll's documentation (``python3 -m nox -s docs`` builds it).

The packages are imported as installed (the nox session installs every one of them); a local
build against the sources works with ``PYTHONPATH=$(ls -d packages/*/src | paste -sd:)``.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import matplotlib
import torch

matplotlib.use("Agg")
os.environ.setdefault("MPLBACKEND", "Agg")

# The examples run inside this process. One intra-op thread, as the test suites use (the root
# conftest): on a shared 2-core machine, torch's default of one thread per core spent most of the
# examples' wall time waiting (the whole build used 4.8 min of CPU in 17 min).
torch.set_num_threads(1)

# numpydoc warns about the docstrings' own sections ("Shapes") each time it parses them; the
# numpydoc_sections extension keeps them (under Notes) on the rendered pages
warnings.filterwarnings("ignore", message="Unknown section", category=UserWarning)

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))

project = "memroll"
author = "memroll developers"
copyright = "memroll developers"
release = version = ""  # each package has its own version; the API pages give them

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
    "memroll_api",  # api/<package>.rst from every package's __all__
    "numpydoc_sections",  # keeps the docstrings' own sections ("Shapes") that numpydoc drops
]

templates_path = ["_templates"]
exclude_patterns = ["_build", "examples/GALLERY_HEADER.rst", "auto_examples/*.ipynb"]
root_doc = "index"

html_theme = "furo"
html_title = "memroll"
html_static_path: list[str] = []

# --- API reference ---------------------------------------------------------------------------
autosummary_generate = True
autosummary_imported_members = True  # the public names are re-exported from private modules
autodoc_typehints = "none"  # the numpydoc Parameters sections carry the types
autodoc_member_order = "bysource"
numpydoc_show_class_members = False  # the class template lists members through autodoc
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

# --- the gallery: every example runs at every build; one that fails fails the build -------------
sphinx_gallery_conf = {
    "examples_dirs": "examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "ignore_pattern": r"__init__\.py",
    "download_all_examples": False,
    "remove_config_comments": True,
    "abort_on_example_error": False,  # run them all, then fail listing every broken one
    "only_warn_on_example_error": False,
    "min_reported_time": 0,
    "matplotlib_animations": False,
    "reset_modules": ("matplotlib",),
}

# --- nitpicky mode (sphinx-build -n): every reference must resolve, or be ignored here with the
# reason. No intersphinx: the project's machines reach package registries only, so inventories
# of Python, torch and numpy cannot be fetched at build time; references into those projects
# are plain text instead of links.
nitpick_ignore_regex = [
    # torch, numpy and the standard library (no inventories; see above)
    ("py:class", r"(torch|numpy|np|nn|collections|typing|pathlib|os|enum|abc)(\..*)?"),
    ("py:class", r"(Tensor|Module|Parameter|Path|Enum|ABC|Generic|Protocol)"),
    ("py:(func|meth|class|mod|obj|exc|data|attr)", r"(torch|numpy|np|nn|h5py|sigpy|nibabel)\..*"),
    # private names are not documented, on purpose: ``:show-inheritance:`` names a public class's
    # private base (revlayers._coupling._Coupling), and a few docstrings point into private
    # modules or functions (unrolled._priors, unrolled._strategy, physops' register_operand;
    # reported to the maintainers, to be reworded in the docstrings)
    ("py:(class|mod|func|meth|obj)", r"[\w.]*\b_[a-z]\w*(\.[\w.]+)?"),
    ("py:func", r"register_operand"),
    # the libraries' subpackages and the application's modules have no pages of their own: the
    # API pages document each package's public names (``__all__``), where the subpackages'
    # public names are re-exported
    ("py:mod", r"(unrolled|memroll)\.\w+"),
    ("py:func", r"memroll\.runs\.\w+"),
]
