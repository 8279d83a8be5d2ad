"""Stands in for Daphne's app in the Channels suite's ``INSTALLED_APPS``.

Tidings replaces Daphne, so no Daphne code runs: this empty package only lets the
suite's settings load. Only ``compliance/channels/run.py`` puts it on the path.
"""
