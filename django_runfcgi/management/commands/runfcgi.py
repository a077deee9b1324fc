"""``manage.py runfcgi``: Django 1.8's command, with its options in both forms."""

from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from django_runfcgi import options
from django_runfcgi.lifecycle import StartupError, serve


class Command(BaseCommand):
    help = (
        "Serve this project over FastCGI, SCGI or AJP 1.3 through flup. Options are "
        "given as key=value words (as in Django 1.8) or as --key value; "
        "'manage.py runfcgi help' lists them."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "words",
            nargs="*",
            metavar="key=value",
            help="Options in the historic form, e.g. protocol=scgi port=8025; or 'help'.",
        )
        options.add_arguments(parser)

    def handle(self, *args: Any, **opts: Any) -> None:
        try:
            words, wants_help = options.parse_words(opts.get("words", ()))
            if wants_help:
                self.stdout.write(options.help_text())
                return
            given = {name: opts[name] for name in options.BY_NAME if name in opts}
            # runfastcgi() passes Python-typed keyword arguments through here.
            config = options.resolve(options.merge(words, given, opts.get("python_values", {})))
            serve(config, self._announce if opts["verbosity"] >= 1 else lambda _: None)
        except (options.OptionError, StartupError) as err:
            raise CommandError(str(err)) from err

    def _announce(self, line: str) -> None:
        self.stdout.write(self.style.SUCCESS(line))
        self.stdout.flush()
