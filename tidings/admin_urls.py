"""The live admin page's URL: ``path("admin/tidings/", include("tidings.admin_urls"))``.

Put it before ``path("admin/", admin.site.urls)``, whose catch-all would take the path
otherwise. Loading it (with the URLconf, once Django is set up) also lists the page on
``admin.site``'s index; see :mod:`tidings.admin`.
"""

from __future__ import annotations

from django.apps import apps
from django.urls import URLPattern, path

from tidings.admin import URL_NAME, live_page, show_on

__all__ = ["urlpatterns"]

urlpatterns: list[URLPattern] = [path("", live_page, name=URL_NAME)]

# A URLconf loads after django.setup(); a bare import (before the settings) must not
# build the admin site.
if apps.ready and apps.is_installed("django.contrib.admin"):
    from django.contrib import admin

    show_on(admin.site)
