from __future__ import annotations

from django.apps import AppConfig


class RoutingConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "routing"

    def ready(self) -> None:
        # The model page (evaluation) shows the model's routing profile; evaluation never imports routing.
        from evaluation import views as evaluation_views
        from routing.views import model_profile_context

        if model_profile_context not in evaluation_views.MODEL_PAGE_EXTRAS:
            evaluation_views.MODEL_PAGE_EXTRAS.append(model_profile_context)
