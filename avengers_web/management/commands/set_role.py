"""Give a user one role: viewer, editor or admin (see avengers_web/roles.py)."""
from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from avengers_web.roles import ROLES, set_role


class Command(BaseCommand):
    help = "Make a user a viewer, an editor or an admin (admins may also enter the admin site)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("role", choices=ROLES)

    def handle(self, *args: Any, **options: Any) -> None:
        user = get_user_model().objects.filter(username=options["username"]).first()
        if user is None:
            raise CommandError(f"no user named {options['username']!r}; create one with `manage.py createsuperuser`")
        set_role(user, options["role"])
        self.stdout.write(f"{user.get_username()} is now {'an' if options['role'][0] in 'ae' else 'a'} {options['role']}")
