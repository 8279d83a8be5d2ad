"""A small Django project served by ``manage.py runserver`` and the live test server."""
