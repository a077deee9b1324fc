#!/home/mysite/venv/bin/python
"""Started by mod_fcgid, which hands it a listening socket on standard input."""

import os
import sys

# Where the project is (the directory holding manage.py) and its settings.
sys.path.insert(0, "/home/mysite/mysite")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")

from django_runfcgi import runfastcgi

runfastcgi(method="threaded", daemonize="false")
