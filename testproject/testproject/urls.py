from django.contrib import admin
from django.urls import path

from testproject import views

urlpatterns = [
    path("", views.index, name="index"),
    path("echo/", views.echo, name="echo"),
    path("meta/", views.meta, name="meta"),
    path("environ/", views.environ, name="environ"),
    path("café/ünïcode/", views.unicode_route, name="unicode"),
    path("upload/", views.upload, name="upload"),
    path("stream/", views.stream, name="stream"),
    path("download/", views.download, name="download"),
    path("redirect/", views.redirect_after_post, name="redirect"),
    path("fail/", views.fail, name="fail"),
    path("fail-late/", views.fail_late, name="fail-late"),
    path("ignore-body/", views.ignore_body, name="ignore-body"),
    path("slow/", views.slow, name="slow"),
    path("grow/", views.grow, name="grow"),
    path("status/<int:code>/", views.status, name="status"),
    path("cookie/", views.set_cookie, name="cookie"),
    path("assets/", views.assets, name="assets"),
    path("admin/", admin.site.urls),
]
