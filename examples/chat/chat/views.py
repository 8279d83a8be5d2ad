# chat/views.py
import re

from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from .models import Message
from .notifications import notify


@login_required
def index(request):
    """The rooms that have messages, a form to enter any room, and users to poke."""
    room = request.GET.get("room", "").strip()
    if re.fullmatch(r"[-a-zA-Z0-9_]{1,50}", room):
        return redirect("room", room=room)
    rooms = Message.objects.order_by("room").values_list("room", flat=True).distinct()
    users = get_user_model().objects.exclude(pk=request.user.pk).order_by("username")
    return render(request, "chat/index.html", {"rooms": rooms, "users": users})


@login_required
def room(request, room):
    """A room's page: the last 50 messages, then live ones over the WebSocket."""
    latest = Message.objects.filter(room=room).select_related("author").order_by("-id")[:50]
    history = [message.as_json() for message in reversed(latest)]
    return render(request, "chat/room.html", {"room": room, "history": history})


@login_required
@require_POST
def poke(request, user_id):
    """A plain Django view that pushes a notification to another user's pages."""
    user = get_object_or_404(get_user_model(), pk=user_id)
    notify(user.pk, f"{request.user.get_username()} poked you.")
    return redirect("index")
