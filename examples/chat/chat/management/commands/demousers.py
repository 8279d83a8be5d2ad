"""``python manage.py demousers PASSWORD NAME...``: create the demo's users.

Used by ./scripts/demo. Users that already exist are left as they are, so it
can run at every start.
"""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Create users with the given password, unless they exist."

    def add_arguments(self, parser):
        parser.add_argument("password")
        parser.add_argument("usernames", nargs="+")

    def handle(self, *args, **options):
        User = get_user_model()
        for name in options["usernames"]:
            if not User.objects.filter(username=name).exists():
                User.objects.create_user(name, password=options["password"])
                self.stdout.write(f"Created user {name}.")
