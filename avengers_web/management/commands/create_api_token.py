"""Create an API token for a user and print it once."""
from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from avengers_web.services import MAX_TOKEN_DAYS, api_token_create


class Command(BaseCommand):
    help = ("Create a bearer token for the REST API and print it (it is stored hashed and never shown again). "
            "The token acts with its user's role.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", default="", help="A label for the token.")
        parser.add_argument("--read-only", action="store_true",
                            help="Allow only reads (GET): no uploads, runs, snapshots, model changes or routed queries.")
        parser.add_argument("--expires-in-days", type=int, default=None, metavar="DAYS",
                            help=f"End the token after DAYS days (1 to {MAX_TOKEN_DAYS}); default: never.")

    def handle(self, *args: Any, **options: Any) -> None:
        user = get_user_model().objects.filter(username=options["username"]).first()
        if user is None:
            raise CommandError(f"no user named {options['username']!r}; create one with `manage.py createsuperuser`")
        try:
            _, key = api_token_create(user=user, name=options["name"][:100], read_only=options["read_only"],
                                      expires_in_days=options["expires_in_days"])
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(key)
