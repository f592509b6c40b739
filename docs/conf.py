"""Sphinx configuration of acme's documentation (built by tests/test_docs.py with -W)."""
from __future__ import annotations

import os
import sys

# The docs describe this checkout, not whatever acme is installed elsewhere.
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)

import acme  # noqa: E402

project = "acme"
author = "the acme developers"
copyright = "the acme developers"
release = acme.__version__
version = release

extensions = ["sphinx.ext.autodoc", "numpydoc"]
exclude_patterns = ["_build"]
root_doc = "index"
nitpicky = False

# autodoc: members in source order; type hints go into the description, where numpydoc
# docstrings already name the types.
autodoc_member_order = "bysource"
autodoc_typehints = "none"

# numpydoc: the API pages list members explicitly, so no autosummary tables of every
# attribute (which would need stub pages for each).
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

html_theme = "alabaster"
html_static_path: list = []
html_theme_options = {"description": "Run one function many times in parallel and keep "
                                     "every result safe on disk.",
                      "fixed_sidebar": True}

# Docstrings name acme's internal modules (``acme.backends.slurm_pool``, ...) to say where
# something lives; those modules have no page of their own. Every other reference must
# resolve (tests/test_docs.py builds with -n).
nitpick_ignore_regex = [("py:mod", r"acme(\..*)?")]
