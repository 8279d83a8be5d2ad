"""Plain Django views of the browser test project."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.urls import path


def index(request: HttpRequest) -> HttpResponse:
    """A page without the client, to check the project serves Django views."""
    return HttpResponse(b"tidings browser test project", content_type="text/plain")


urlpatterns = [path("", index)]
