# At the end of /srv/mysite/mysite/settings.py:
RUNFCGI = {
    "protocol": "fcgi",
    "socket": "/run/mysite/fcgi.sock",
    "mkdir": True,
    "pidfile": "/run/mysite/mysite.pid",
    "maxchildren": 20,
    "maxrequests": 1000,
    "shutdowntimeout": 10,
}
