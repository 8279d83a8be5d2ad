"""Build hook for the optional C accelerator; everything else is in pyproject.toml.

The extension is optional: without a C compiler the install still succeeds and
tidings.wire falls back to its pure-Python unmasking (same results, slower for
large messages). Set TIDINGS_NO_EXTENSIONS=1 to skip it on purpose.
"""

import os

from setuptools import Extension, setup

extensions = []
if not os.environ.get("TIDINGS_NO_EXTENSIONS"):
    extensions.append(
        Extension("tidings.wire._speedups", ["tidings/wire/_speedups.c"], optional=True)
    )

setup(ext_modules=extensions)
