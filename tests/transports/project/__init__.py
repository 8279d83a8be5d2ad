"""The Django project that ``tidings serve`` runs in the multi-process transport tests."""
