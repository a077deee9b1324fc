"""WSGI entry point, named by WSGI_APPLICATION as runfcgi and runserver expect."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")

application = get_wsgi_application()
