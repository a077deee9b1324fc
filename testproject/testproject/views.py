"""Views that exercise what a server in front of Django must get right."""

import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from django.conf import settings
from django.core.files.storage import default_storage
from django.http import (
    FileResponse,
    HttpRequest,
    HttpResponse,
    HttpResponseRedirect,
    JsonResponse,
    StreamingHttpResponse,
)
from django.templatetags.static import static
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt

from testproject.bigfile import big_file

ECHO_META = (
    "SCRIPT_NAME",
    "PATH_INFO",
    "QUERY_STRING",
    "REQUEST_METHOD",
    "CONTENT_TYPE",
    "CONTENT_LENGTH",
    "HTTP_HOST",
    "SERVER_NAME",
    "SERVER_PORT",
    "REQUEST_URI",
    "wsgi.url_scheme",
    "wsgi.multithread",
    "wsgi.multiprocess",
)


def index(request: HttpRequest) -> HttpResponse:
    return HttpResponse(
        "<!doctype html><title>django-runfcgi demo</title>"
        "<h1>Served by runfcgi</h1>"
        f"<p>Worker PID {os.getpid()}, path {request.path!s}.</p>"
        f'<p><a href="{reverse("echo")}?hello=world">What Django sees</a></p>',
    )


@csrf_exempt
def echo(request: HttpRequest) -> JsonResponse:
    """Report what Django saw, so tests compare it with what the client sent."""
    body = request.body
    return JsonResponse(
        {
            "method": request.method,
            "path": request.path,
            "path_info": request.path_info,
            "script_name": request.META.get("SCRIPT_NAME", ""),
            "get": {k: request.GET.getlist(k) for k in request.GET},
            "body_length": len(body),
            "body_sha256": hashlib.sha256(body).hexdigest(),
            "reverse_echo": reverse("echo"),
            "reverse_unicode": reverse("unicode"),
            "absolute_uri": request.build_absolute_uri(),
            "is_secure": request.is_secure(),
            "cookies": dict(request.COOKIES),
            "pid": os.getpid(),
            "release": settings.RELEASE,
            "meta": {k: request.META[k] for k in ECHO_META if k in request.META},
        }
    )


@csrf_exempt
def meta(request: HttpRequest) -> JsonResponse:
    """Every text value of the WSGI environ, to see what a front end put there."""
    return JsonResponse({k: v for k, v in request.META.items() if isinstance(v, str)})


def environ(request: HttpRequest) -> JsonResponse:
    """The names in the process's environment, to see what the server left there."""
    return JsonResponse({"pid": os.getpid(), "names": sorted(os.environ)})


def unicode_route(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"route": "unicode", "path": request.path})


@csrf_exempt
def upload(request: HttpRequest) -> JsonResponse:
    files = {
        name: {
            "name": f.name,
            "size": f.size,
            "sha256": hashlib.sha256(b"".join(f.chunks())).hexdigest(),
        }
        for name, f in request.FILES.items()
    }
    return JsonResponse({"files": files, "fields": dict(request.POST.items())})


def stream(request: HttpRequest) -> StreamingHttpResponse:
    """Chunks with pauses between them, to show whether the path buffers."""
    count = int(request.GET.get("n", "5"))
    pause = float(request.GET.get("pause", "0.2"))

    def chunks() -> Iterator[bytes]:
        for i in range(count):
            if i:
                time.sleep(pause)
            yield f"chunk {i} at {time.monotonic():.3f}\n".encode()

    response = StreamingHttpResponse(chunks(), content_type="text/plain")
    if request.GET.get("accel") == "no":
        # How an application asks nginx not to buffer this one response.
        response["X-Accel-Buffering"] = "no"
    return response


def download(request: HttpRequest) -> FileResponse:
    size = int(request.GET.get("size", str(20 * 1024 * 1024)))
    return FileResponse(big_file(size).open("rb"), content_type="application/octet-stream")


@csrf_exempt
def redirect_after_post(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        return HttpResponseRedirect(reverse("echo") + "?redirected=1")
    return HttpResponse("POST here to be redirected.\n", content_type="text/plain")


def fail(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("testproject.views.fail raised on purpose")


def fail_late(request: HttpRequest) -> StreamingHttpResponse:
    """Raise while the server iterates the response: past Django, into the server."""

    def chunks() -> Iterator[bytes]:
        raise RuntimeError("testproject.views.fail_late raised on purpose")
        yield b""  # pragma: no cover - makes this a generator

    return StreamingHttpResponse(chunks())


@csrf_exempt
def ignore_body(request: HttpRequest) -> HttpResponse:
    """Answer without reading the request body, as many real views do."""
    return HttpResponse("ignored\n", content_type="text/plain")


def slow(request: HttpRequest) -> JsonResponse:
    seconds = min(float(request.GET.get("s", "1")), 30.0)
    started = time.monotonic()
    if marks := os.environ.get("TESTPROJECT_MARK_DIR"):
        # Tests that signal a server while a request is in progress wait for this file.
        Path(marks, "slow-started").touch()
    time.sleep(seconds)
    return JsonResponse(
        {
            "pid": os.getpid(),
            "thread": threading.get_native_id(),
            "slept": time.monotonic() - started,
        }
    )


def status(request: HttpRequest, code: int) -> HttpResponse:
    return HttpResponse(status=code)


def set_cookie(request: HttpRequest) -> HttpResponse:
    response = HttpResponse(json.dumps(dict(request.COOKIES)), content_type="application/json")
    response.set_cookie("flavour", request.GET.get("flavour", "oatmeal"))
    response.set_cookie("second", "two")
    return response


def assets(request: HttpRequest) -> JsonResponse:
    """The URLs Django makes for static and uploaded files, under the mount prefix."""
    return JsonResponse(
        {
            "static": static("admin/css/base.css"),
            "static_url": settings.STATIC_URL,
            "media_url": settings.MEDIA_URL,
            "media_file": default_storage.url("report.pdf"),
        }
    )


# What /grow/ keeps: memory a leaking application would never give back.
_GROWN: list[bytearray] = []


def grow(request: HttpRequest) -> JsonResponse:
    """Keep ?mb= more megabytes, written so that they are resident, and answer."""
    megabytes = int(request.GET.get("mb", "1"))
    _GROWN.append(bytearray(b"\x01") * (megabytes * 1024 * 1024))
    kept = sum(len(chunk) for chunk in _GROWN) // (1024 * 1024)
    return JsonResponse({"pid": os.getpid(), "kept_mb": kept})
