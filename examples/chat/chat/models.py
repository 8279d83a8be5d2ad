# chat/models.py
from django.conf import settings
from django.db import models


class Message(models.Model):
    """One chat message, in a room named by its URL."""

    room = models.CharField(max_length=50, db_index=True)
    author = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    text = models.TextField(max_length=1000)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created", "id"]

    def __str__(self) -> str:
        return f"{self.author} in {self.room}: {self.text[:40]}"

    def as_json(self) -> dict[str, object]:
        """What the browser gets, over the WebSocket and in the page's history."""
        return {
            "id": self.pk,
            "author": self.author.get_username(),
            "text": self.text,
            "created": self.created.isoformat(),
        }
