"""URL map: dashboard pages, the REST API under /api/v1/, its OpenAPI schema, and the admin."""
from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_not_required
from django.templatetags.static import static
from django.urls import include, path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from avengers_web import views as base_views
from avengers_web.api import api_not_found
from config import health, metrics, views
from evaluation import urls as evaluation_urls
from routing import urls as routing_urls

urlpatterns = [
    path("", views.overview, name="overview"),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", metrics.metrics, name="metrics"),
    path("favicon.ico", login_not_required(RedirectView.as_view(url=static("favicon.svg"), permanent=True))),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("tokens/", base_views.token_list, name="tokens"),
    path("tokens/<int:pk>/revoke/", base_views.token_revoke, name="token-revoke"),
    path("", include(evaluation_urls.pages)),
    path("", include(routing_urls.pages)),
    path("api/v1/", include(evaluation_urls.api)),
    path("api/v1/", include(routing_urls.api)),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    # The split view serves Swagger UI's start-up script as a file, so the page needs no inline script (CSP).
    path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="api-schema"), name="api-docs"),
    path("api/<path:rest>", api_not_found),
    path("v1/", include(routing_urls.openai)),
    path("v1/<path:rest>", api_not_found),
    path("admin/", admin.site.urls),
]

# Error pages without DEBUG; on /api/ and /v1/ the middleware answers in the API's JSON shape instead.
handler400 = "avengers_web.errors.bad_request"
handler403 = "avengers_web.errors.permission_denied"
handler404 = "avengers_web.errors.page_not_found"
handler500 = "avengers_web.errors.server_error"
