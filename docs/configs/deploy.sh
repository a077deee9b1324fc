#!/bin/sh
# /srv/mysite/deploy.sh: run once the new code is in place (git pull, pip install,
# migrate, collectstatic). The options come from settings.RUNFCGI.
set -e
cd /srv/mysite
# Everything a start checks, with the new code: on a problem, stop here.
venv/bin/python manage.py runfcgi check
# HUP, then wait: exit 0 once the new code serves, 1 with the reason it did not.
venv/bin/python manage.py runfcgi reload
