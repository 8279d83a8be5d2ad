# chat/management/commands/notify.py
"""``python manage.py notify USERNAME TEXT``: push a notification to a user's pages."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from tidings.layers import InMemoryChannelLayer, get_channel_layer

from chat.notifications import notify


class Command(BaseCommand):
    help = "Push a notification to every open page of a user."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("text")

    def handle(self, *args, **options):
        if isinstance(get_channel_layer(), InMemoryChannelLayer):
            self.stderr.write(
                "Warning: the in-memory channel layer only reaches consumers in this "
                "process, not the server's. Set TIDINGS_REDIS_URL for both."
            )
        User = get_user_model()
        try:
            user = User.objects.get(username=options["username"])
        except User.DoesNotExist:
            raise CommandError(f"No user named {options['username']!r}.") from None
        notify(user.pk, options["text"])
        self.stdout.write(f"Sent to {user.get_username()}.")
