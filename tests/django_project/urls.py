"""Plain Django views, reached through ``asgi.application``'s fallback route."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.urls import path


def hello(request: HttpRequest) -> HttpResponse:
    """A Django view, to show that runserver still serves ordinary views."""
    return HttpResponse(b"hello from a django view", content_type="text/plain")


def host(request: HttpRequest) -> HttpResponse:
    """The request's host, checked against ALLOWED_HOSTS (400 when not allowed)."""
    return HttpResponse(request.get_host().encode(), content_type="text/plain")


urlpatterns = [path("django/", hello), path("host/", host)]
