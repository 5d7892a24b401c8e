"""Create an API token for a user and print it once."""
from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from avengers_web.services import api_token_create


class Command(BaseCommand):
    help = "Create a bearer token for the REST API and print it (it is stored hashed and never shown again)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", default="", help="A label for the token.")

    def handle(self, *args: Any, **options: Any) -> None:
        user = get_user_model().objects.filter(username=options["username"]).first()
        if user is None:
            raise CommandError(f"no user named {options['username']!r}; create one with `manage.py createsuperuser`")
        _, key = api_token_create(user=user, name=options["name"])
        self.stdout.write(key)
