# chat/urls.py
from django.urls import path, re_path

from . import views

urlpatterns = [
    path("", views.index, name="index"),
    re_path(r"^chat/(?P<room>[-a-zA-Z0-9_]{1,50})/$", views.room, name="room"),
    path("poke/<int:user_id>/", views.poke, name="poke"),
]
