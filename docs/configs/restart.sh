#!/bin/sh
cd $PROJDIR
if [ -f $PIDFILE ]; then kill `cat -- $PIDFILE`; rm -f -- $PIDFILE; fi
exec /usr/bin/env - PYTHONPATH="../python:.." /srv/mysite/venv/bin/python manage.py runfcgi socket=$SOCKET pidfile=$PIDFILE
