"""Settings for the project that the tests and the demo serve through runfcgi.

A few values come from the environment so that a test can start the same project
mounted under a prefix, with DEBUG on, with its static files collected somewhere, or
with a broken WSGI_APPLICATION.
"""

import json
import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = "testproject-not-secret"  # noqa: S105 - a demo project, never deployed
DEBUG = os.environ.get("TESTPROJECT_DEBUG", "") == "1"
ALLOWED_HOSTS = ["*"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_runfcgi",
    "testproject",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "testproject.urls"
WSGI_APPLICATION = os.environ.get("TESTPROJECT_WSGI", "testproject.wsgi.application")

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("TESTPROJECT_DB", str(BASE_DIR / "db.sqlite3")),
    }
}

# Uploads above this stay on disk, so a 50 MB POST does not live in memory twice.
DATA_UPLOAD_MAX_MEMORY_SIZE = None
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# Relative, as startproject writes them: Django adds the mount prefix (SCRIPT_NAME).
STATIC_URL = "static/"
MEDIA_URL = "media/"
# Where collectstatic puts the files the front end serves at /static/.
STATIC_ROOT = os.environ.get("TESTPROJECT_STATIC_ROOT", str(BASE_DIR / "static"))
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

if os.environ.get("TESTPROJECT_FORCE_SCRIPT_NAME") is not None:
    FORCE_SCRIPT_NAME = os.environ["TESTPROJECT_FORCE_SCRIPT_NAME"]

if os.environ.get("TESTPROJECT_CHECK_ERROR") == "1":
    # Lets a test show that system check errors stop runfcgi before it detaches.
    SILENCED_SYSTEM_CHECKS: list[str] = []
    INSTALLED_APPS.append("testproject.broken_checks")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}

# The code a reload must pick up: a file read once, when the project loads. "broken"
# stands for a deploy whose code fails to import.
RELEASE = ""
if os.environ.get("TESTPROJECT_RELEASE_FILE"):
    RELEASE = Path(os.environ["TESTPROJECT_RELEASE_FILE"]).read_text().strip()
    if RELEASE == "broken":
        raise RuntimeError("this release does not load")

# runfcgi's options for this project, from a JSON file read when the project loads: a
# test gives settings.RUNFCGI, and changes it for a reload.
if os.environ.get("TESTPROJECT_RUNFCGI_FILE"):
    RUNFCGI = json.loads(Path(os.environ["TESTPROJECT_RUNFCGI_FILE"]).read_text())
