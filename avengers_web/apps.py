from __future__ import annotations

from django.apps import AppConfig


class AvengersWebConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "avengers_web"
    verbose_name = "Platform"

    def ready(self) -> None:
        from django.db.models.signals import post_migrate

        from avengers_web import schema  # noqa: F401  (registers the OpenAPI auth extension)

        post_migrate.connect(_sync_roles, dispatch_uid="avengers_web.sync_roles")


def _sync_roles(sender: AppConfig, using: str = "default", **kwargs: object) -> None:
    """After migrate (and after each test flush): every app's permissions exist, then the role groups."""
    if sender.name != "avengers_web":
        return
    from django.apps import apps
    from django.contrib.auth.management import create_permissions

    from avengers_web.roles import sync_roles

    for config in apps.get_app_configs():
        create_permissions(config, verbosity=0, using=using)
    sync_roles()
