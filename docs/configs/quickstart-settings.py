# In /srv/mysite/mysite/settings.py, with "django_runfcgi" added to INSTALLED_APPS:
DEBUG = False
ALLOWED_HOSTS = ["example.com"]
STATIC_URL = "static/"
# Where manage.py collectstatic puts the static files, and nginx serves them from.
STATIC_ROOT = "/srv/mysite/static"
