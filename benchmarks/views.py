"""The four kinds of work every server is measured on."""

import time

from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

HELLO = b"Hello, world!\n"
MEGABYTE = 1024 * 1024
BIG = b"x" * MEGABYTE
SLEEP_SECONDS = 0.05


def hello(request: HttpRequest) -> HttpResponse:
    return HttpResponse(HELLO, content_type="text/plain")


def sleep(request: HttpRequest) -> HttpResponse:
    """Waits like a view blocked on a database or an API, holding its worker but no CPU."""
    time.sleep(SLEEP_SECONDS)
    return HttpResponse(b"slept\n", content_type="text/plain")


def big(request: HttpRequest) -> HttpResponse:
    return HttpResponse(BIG, content_type="application/octet-stream")


@csrf_exempt
@require_POST
def sink(request: HttpRequest) -> HttpResponse:
    return HttpResponse(str(len(request.body)).encode(), content_type="text/plain")
