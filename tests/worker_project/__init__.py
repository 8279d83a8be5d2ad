"""A tiny Django project for the ``runworker`` subprocess tests."""
