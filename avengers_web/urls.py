"""URL map: dashboard pages, the REST API under /api/v1/, its OpenAPI schema, and the admin."""
from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_not_required
from django.templatetags.static import static
from django.urls import include, path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from avengers_web import health, metrics, views
from avengers_web.api import api_not_found
from evaluation import views as evaluation_views
from evaluation import views_runs
from routing import views as routing_views
from routing import views_serving

urlpatterns = [
    path("", views.overview, name="overview"),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", metrics.metrics, name="metrics"),
    path("favicon.ico", login_not_required(RedirectView.as_view(url=static("favicon.svg"), permanent=True))),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("tokens/", views.token_list, name="tokens"),
    path("tokens/<int:pk>/revoke/", views.token_revoke, name="token-revoke"),
    path("datasets/", evaluation_views.dataset_list, name="dataset-list"),
    path("datasets/upload/", evaluation_views.dataset_upload, name="dataset-upload"),
    path("datasets/<int:pk>/", evaluation_views.dataset_detail, name="dataset-detail"),
    path("datasets/<int:pk>/templates/", evaluation_views.dataset_templates, name="dataset-templates"),
    path("imports/<int:pk>/", evaluation_views.import_detail, name="import-detail"),
    path("models/", evaluation_views.model_list, name="model-list"),
    path("models/new/", evaluation_views.model_create, name="model-create"),
    path("models/<int:pk>/", evaluation_views.model_detail, name="model-detail"),
    path("models/<int:pk>/edit/", evaluation_views.model_edit, name="model-edit"),
    path("models/<int:pk>/toggle-active/", evaluation_views.model_toggle_active, name="model-toggle-active"),
    path("models/<int:pk>/test-connection/", evaluation_views.model_test_connection, name="model-test-connection"),
    path("evaluations/", views_runs.evaluation_list, name="evaluation-list"),
    path("evaluations/new/", views_runs.evaluation_create, name="evaluation-create"),
    path("evaluations/<int:pk>/", views_runs.evaluation_detail, name="evaluation-detail"),
    path("evaluations/<int:pk>/cancel/", views_runs.evaluation_cancel, name="evaluation-cancel"),
    path("evaluations/<int:pk>/resume/", views_runs.evaluation_resume, name="evaluation-resume"),
    path("evaluations/<int:pk>/samples/", views_runs.evaluation_samples, name="evaluation-samples"),
    path("snapshots/", routing_views.snapshot_list, name="snapshot-list"),
    path("snapshots/new/", routing_views.snapshot_create, name="snapshot-create"),
    path("snapshots/<int:pk>/", routing_views.snapshot_detail, name="snapshot-detail"),
    path("snapshots/<int:pk>/derive/", routing_views.snapshot_derive, name="snapshot-derive"),
    path("snapshots/<int:pk>/activate/", routing_views.snapshot_activate, name="snapshot-activate"),
    path("snapshots/<int:pk>/clusters/", routing_views.snapshot_clusters, name="snapshot-clusters"),
    path("snapshots/<int:pk>/clusters/<int:index>/", routing_views.cluster_detail, name="cluster-detail"),
    path("snapshots/<int:pk>/heatmap/", routing_views.snapshot_heatmap, name="snapshot-heatmap"),
    path("snapshots/<int:pk>/map/", routing_views.snapshot_map, name="snapshot-map"),
    path("playground/", views_serving.playground, name="playground"),
    path("traffic/", views_serving.traffic, name="traffic"),
    path("api/v1/", include("evaluation.urls")),
    path("api/v1/", include("routing.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    # The split view serves Swagger UI's start-up script as a file, so the page needs no inline script (CSP).
    path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="api-schema"), name="api-docs"),
    path("api/<path:rest>", api_not_found),
    path("v1/", include("routing.urls_openai")),
    path("v1/<path:rest>", api_not_found),
    path("admin/", admin.site.urls),
]

# Error pages without DEBUG; on /api/ and /v1/ the middleware answers in the API's JSON shape instead.
handler400 = "avengers_web.errors.bad_request"
handler403 = "avengers_web.errors.permission_denied"
handler404 = "avengers_web.errors.page_not_found"
handler500 = "avengers_web.errors.server_error"
