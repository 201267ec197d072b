"""Builds the optional compiled delta kernel; everything else about the project is in pyproject.toml.

`optional=True`: where no C compiler is available the install still succeeds and `mmlib.util.delta` uses its
numpy code instead (same bytes, slower).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("mmlib.util._delta_kernel", ["mmlib/util/_delta_kernel.c"], optional=True)])
