"""A WSGI module that fails to import, as a deployment with a typo would."""

raise ImportError("testproject.broken_wsgi cannot be imported (on purpose)")
