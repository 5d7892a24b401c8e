from __future__ import annotations

from django.apps import AppConfig


class AvengersWebConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "avengers_web"
    verbose_name = "Platform"

    def ready(self) -> None:
        from avengers_web import schema  # noqa: F401  (registers the OpenAPI auth extension)
