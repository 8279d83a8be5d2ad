# iot/urls.py
"""The dashboard page (its script and style are inline: no build step)."""

from pathlib import Path

from django.http import HttpRequest, HttpResponse
from django.urls import path

PAGE = Path(__file__).with_name("dashboard.html")


def dashboard(request: HttpRequest) -> HttpResponse:
    return HttpResponse(PAGE.read_bytes(), content_type="text/html; charset=utf-8")


urlpatterns = [path("", dashboard)]
