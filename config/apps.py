from __future__ import annotations

from pathlib import Path

from django.apps import AppConfig


class ConfigConfig(AppConfig):
    """The project shell: settings, URLs, the Celery app, the overview page, health, metrics, `demo` and `serve`."""

    name = "config"
    verbose_name = "Project"

    def ready(self) -> None:
        make_local_folders()


def make_local_folders() -> None:
    """Make the folders the settings name (static files, the filesystem broker's, the metrics'); settings make none."""
    from django.conf import settings

    folders = [Path(settings.STATIC_ROOT)]
    options = getattr(settings, "CELERY_BROKER_TRANSPORT_OPTIONS", None) or {}
    folders += [Path(options[key]) for key in ("data_folder_in", "data_folder_out", "processed_folder",
                                                "control_folder") if options.get(key)]
    if settings.METRICS_MULTIPROC_DIR:
        folders.append(Path(settings.METRICS_MULTIPROC_DIR))
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
