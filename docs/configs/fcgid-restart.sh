#!/bin/sh
# Stop the copies of mysite.fcgi that mod_fcgid runs: only your own processes whose whole
# command line is the script's (its first line's Python, then the script's full path).
pkill -TERM -u "$USER" -xf '/home/mysite/venv/bin/python /home/mysite/public_html/mysite.fcgi'
