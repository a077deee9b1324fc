"""What the tests share, one job per module; conftest files hold only fixtures.

- paths: the checkout, the test project, the docs' configuration files.
- net: addresses, free ports, whether something accepts.
- processes: processes seen through /proc, the tag that marks a test's own, waiting.
- runner: starting ``manage.py runfcgi`` (or another command) and cleaning up after it.
- jobs: a process model serving trivial jobs in a real process, and its client side.
- clients: FastCGI, SCGI and AJP clients that play the web server's part.
- harness: a protocol's connections served in this process, for in-process tests.
- http: a plain HTTP client for talking to the front ends.
- binaries: the programs the tests drive, found or the test skipped (failed in CI).
- frontends, apache, lighttpd: nginx, Apache httpd and lighttpd run from docs/configs.
- scenarios: what a browser sees through a front end, the same checks for every site.
- wiring: the base of the front-end test modules (backends, front end, site).
- pass_table: the end-to-end pass table printed at the end of a run.
- accounts, reachable: servers started as root that become another user.
- doc_commands, doc_sandbox: the commands the docs show, read and run as shown.
"""
