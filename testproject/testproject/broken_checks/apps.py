from django.apps import AppConfig
from django.core import checks


def always_fails(**kwargs: object) -> list[checks.CheckMessage]:
    return [checks.Error("testproject is configured to fail its checks.", id="testproject.E001")]


class BrokenChecksConfig(AppConfig):
    name = "testproject.broken_checks"

    def ready(self) -> None:
        checks.register(always_fails)
