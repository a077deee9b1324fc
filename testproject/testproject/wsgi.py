"""WSGI entry point, named by WSGI_APPLICATION as runfcgi and runserver expect."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")

application = get_wsgi_application()

if os.environ.get("TESTPROJECT_RELEASE_FILE"):
    from pathlib import Path

    if Path(os.environ["TESTPROJECT_RELEASE_FILE"]).read_text().strip() == "broken-app":
        # A deploy whose settings load but whose application does not, as a view or a
        # middleware that fails to import would make it.
        raise RuntimeError("this release's application does not load")

if os.environ.get("TESTPROJECT_QUERY_AT_LOAD") == "1":
    # Some projects touch the database while loading (a cache warm-up, a site lookup):
    # that connection must not be shared by the workers forked afterwards.
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")

if os.environ.get("TESTPROJECT_URLS_AT_LOAD") == "1":
    # Some projects make file URLs while loading (a manifest check, a middleware that
    # asks the storages): the storages then exist before any request set the prefix.
    from django.core.files.storage import default_storage
    from django.templatetags.static import static

    static("admin/css/base.css")
    default_storage.url("report.pdf")
