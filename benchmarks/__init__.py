"""Load tests of runfcgi, gunicorn and uWSGI behind one nginx, reporting ratios.

Run ``scripts/bench`` (``scripts/bench --help`` for options); docs/benchmarks.rst explains
the table.
"""
