"""Sphinx configuration for django-runfcgi."""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE / "_ext"), str(HERE.parent)]

project = "django-runfcgi"
author = "django-runfcgi contributors"
copyright = "django-runfcgi contributors"
extensions = ["runfcgi_options"]
exclude_patterns = ["_build"]
html_theme = "alabaster"
nitpicky = True
html_static_path = ["_static"]
html_css_files = ["wrap.css"]
