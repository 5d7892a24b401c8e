"""Django admin for platform tables."""
from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from avengers_web.models import Activity, ApiToken


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ["prefix", "name", "user", "read_only", "expires_at", "created_at", "last_used_at", "revoked_at"]
    list_filter = ["read_only", "revoked_at", "created_at"]
    search_fields = ["prefix", "name", "user__username"]
    # The key is never shown (only its hash is stored, and the hash is not shown either).
    fields = ["user", "name", "prefix", "read_only", "expires_at", "rate_limit_per_minute", "created_at",
              "last_used_at", "revoked_at"]
    readonly_fields = ["user", "prefix", "created_at", "last_used_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # tokens are made on the tokens page or with `manage.py create_api_token`, which show the key once


@admin.register(Activity)
class ActivityAdmin(admin.ModelAdmin):
    list_display = ["created_at", "actor", "verb", "target"]
    list_filter = ["verb", "created_at"]
    search_fields = ["verb", "target", "actor__username"]
