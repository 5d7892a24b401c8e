"""Django admin for platform tables."""
from __future__ import annotations

from django.contrib import admin

from avengers_web.models import Activity, ApiToken


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ["prefix", "name", "user", "created_at", "last_used_at", "revoked_at"]
    list_filter = ["revoked_at", "created_at"]
    search_fields = ["prefix", "name", "user__username"]
    readonly_fields = ["key_hash", "prefix", "created_at", "last_used_at"]


@admin.register(Activity)
class ActivityAdmin(admin.ModelAdmin):
    list_display = ["created_at", "actor", "verb", "target"]
    list_filter = ["verb", "created_at"]
    search_fields = ["verb", "target", "actor__username"]
