"""The live admin page: what a running deployment is doing, in the Django admin.

Enable it with ``"tidings"`` and ``"django.contrib.admin"`` in ``INSTALLED_APPS``, the
page's URL before the admin's, and its socket in the WebSocket routing::

    # urls.py
    urlpatterns = [
        path("admin/tidings/", include("tidings.admin_urls")),
        path("admin/", admin.site.urls),
    ]

    # asgi.py
    from tidings import admin as tidings_admin

    "websocket": AllowedHostsOriginValidator(
        AuthMiddlewareStack(URLRouter(tidings_admin.websocket_urlpatterns + ...))
    ),

The page opens its socket at its own path (``/admin/tidings/``): mount both at the
same path. The admin index then lists it under "Tidings" for staff users
(``tidings.admin_urls`` adds the entry to ``admin.site`` when the URLconf loads; call
:func:`show_on` for another ``AdminSite``).

Staff only: anybody else gets 403 on the page and on its socket. The page shows and
changes nothing else; see docs/operations.md for what each panel shows.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.admin import AdminSite
from django.core.exceptions import ImproperlyConfigured, PermissionDenied
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, path, reverse
from django.views.decorators.cache import never_cache

from tidings._admin_consumer import LiveAdminConsumer, is_staff

__all__ = ["URL_NAME", "LiveAdminConsumer", "live_page", "show_on", "websocket_urlpatterns"]

#: The name of the page's URL (``reverse(URL_NAME)``), from ``tidings.admin_urls``.
URL_NAME = "tidings_admin_live"

#: The page's socket, for the WebSocket ``URLRouter`` (the same path as the page).
websocket_urlpatterns = [
    path("admin/tidings/", LiveAdminConsumer.as_asgi()),  # type: ignore[arg-type]
]


@never_cache
def live_page(request: HttpRequest, *, site: AdminSite | None = None) -> TemplateResponse:
    """The page (staff only: anybody else gets 403, anonymous users included).

    Raises:
        PermissionDenied: the user is not active staff.
        ImproperlyConfigured: ``request.user`` is missing (no AuthenticationMiddleware).
    """
    if not hasattr(request, "user"):
        raise ImproperlyConfigured(
            "the live admin page needs request.user: add "
            "'django.contrib.auth.middleware.AuthenticationMiddleware' to MIDDLEWARE"
        )
    if not is_staff(request.user):
        raise PermissionDenied
    site = site or admin.site
    request.current_app = site.name
    context = {
        **site.each_context(request),
        "title": "Live",
        "subtitle": None,
        "app_label": "tidings",
    }
    return TemplateResponse(request, "admin/tidings/live.html", context)


def show_on(site: AdminSite) -> None:
    """List the page on ``site``'s index and sidebar, for staff, once its URL exists."""
    if getattr(site.get_app_list, "tidings_live", False):
        return
    original = site.get_app_list

    def get_app_list(request: HttpRequest, app_label: str | None = None) -> list[Any]:
        apps: list[Any] = original(request, app_label)
        if app_label not in (None, "tidings") or not is_staff(getattr(request, "user", None)):
            return apps
        try:
            url = reverse(URL_NAME)
        except NoReverseMatch:
            return apps  # the URL is not included: nothing to link to
        live = {
            "name": "Live",
            "object_name": "Live",
            "perms": {"view": True},
            "admin_url": url,
            "add_url": None,
            "view_only": True,
        }
        entry = {
            "name": "Tidings",
            "app_label": "tidings",
            "app_url": url,
            "has_module_perms": True,
            "models": [live],
        }
        return sorted([*apps, entry], key=lambda app: str(app["name"]).lower())

    get_app_list.tidings_live = True  # type: ignore[attr-defined]
    site.get_app_list = get_app_list  # type: ignore[method-assign]
