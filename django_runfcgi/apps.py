from __future__ import annotations

from django.apps import AppConfig


class RunFcgiConfig(AppConfig):
    name = "django_runfcgi"
    verbose_name = "runfcgi"

    def ready(self) -> None:
        from django_runfcgi import checks  # noqa: F401, PLC0415 - registers the checks
