from __future__ import annotations

from django.apps import AppConfig
from django.core import checks

CHECK_TAG = "runfcgi"
"""``manage.py check --tag runfcgi`` runs runfcgi's own checks and no others."""


class RunFcgiConfig(AppConfig):
    name = "django_runfcgi"
    verbose_name = "runfcgi"

    def ready(self) -> None:
        """Register the checks here, not at import: importing checks.py registers nothing."""
        from django_runfcgi.checks import check_flup, check_settings  # noqa: PLC0415

        checks.register(check_flup, CHECK_TAG)
        checks.register(check_settings, CHECK_TAG)
