"""``manage.py runfcgi``: Django 1.8's command, with its options in both forms."""

from __future__ import annotations

import sys
from argparse import ArgumentParser, Namespace
from collections.abc import Sequence
from typing import Any, NoReturn

from django.core.management.base import BaseCommand, CommandError, CommandParser

from django_runfcgi import options
from django_runfcgi.lifecycle import StartupError, serve
from django_runfcgi.status import probe
from django_runfcgi.status.probe import DEFAULT_TIMEOUT


class RunfcgiParser(CommandParser):
    """Django's parser, reading runfcgi's ``--name`` forms as the historic words.

    ``--daemonize false``, ``--debug=no`` and ``socket=X --method threaded`` all mean what
    they say: every runfcgi option is rewritten to a ``key=value`` word first, so the two
    forms take the same values and mix in any order. What argparse itself rejects comes
    out as one ``CommandError:`` line and exit status 1, like every other option error,
    rather than a usage text and status 2.
    """

    def parse_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: Namespace | None = None
    ) -> Namespace:
        given = list(sys.argv[1:] if args is None else args)
        try:
            words = options.dashed_to_words(given, self._option_string_actions)
        except options.OptionError as err:
            self.error(str(err))
        return self.parse_intermixed_args(words, namespace)

    def error(self, message: str) -> NoReturn:
        if not self.called_from_command_line:
            raise CommandError(message)
        self.exit(1, f"CommandError: {message}\n")


class Command(BaseCommand):
    help = (
        "Serve this project over FastCGI, SCGI or AJP 1.3 through flup. Options are "
        "given as key=value words (as in Django 1.8) or as --key value; "
        "'manage.py runfcgi help' lists them."
    )

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> CommandParser:
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        # Django builds its CommandParser itself; the subclass adds no state, only how
        # arguments are read and how a mistake is reported.
        parser.__class__ = RunfcgiParser
        return parser

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "words",
            nargs="*",
            metavar="key=value",
            help="Options in the historic form, e.g. protocol=scgi port=8025; or 'help'; "
            "or 'status' and the server's options: ask the running server for its status.",
        )
        options.add_arguments(parser)
        probe = parser.add_argument_group("runfcgi status (the probe) only")
        probe.add_argument(
            "--json", action="store_true", help="Print the status page as JSON instead of text."
        )
        probe.add_argument(
            "--full", action="store_true", help="Add one entry per worker (the page's ?full)."
        )
        probe.add_argument(
            "--timeout",
            default=None,
            metavar="SECONDS",
            help=f"How long to wait for the server (default: {DEFAULT_TIMEOUT:g}).",
        )

    def handle(self, *args: Any, **opts: Any) -> None:
        given_words = list(opts.get("words", ()))
        if given_words[:1] == ["status"]:
            self._probe(given_words[1:], opts)
            return
        for name in ("json", "full", "timeout"):
            if opts.get(name) not in (None, False):
                raise CommandError(f"--{name} applies to 'runfcgi status' only.")
        try:
            words, wants_help = options.parse_words(given_words)
            if wants_help:
                self.stdout.write(options.help_text())
                return
            given = {name: opts[name] for name in options.BY_NAME if name in opts}
            # runfastcgi() passes Python-typed keyword arguments through here.
            config = options.resolve(options.merge(words, given, opts.get("python_values", {})))
            serve(config, self._announce if opts["verbosity"] >= 1 else lambda _: None)
        except (options.OptionError, StartupError) as err:
            raise CommandError(str(err)) from err

    def _probe(self, words: list[str], opts: dict[str, Any]) -> None:
        """``runfcgi status``: print the server's status page, or say in one line why
        not and exit with the reason's status (status/probe.py)."""
        try:
            raw, wants_help = options.parse_words(words)
            if wants_help:
                raise options.OptionError("'help' lists the server's options; leave it out here.")
            given = {name: opts[name] for name in options.BY_NAME if name in opts}
            timeout = DEFAULT_TIMEOUT
            if opts.get("timeout") is not None:
                timeout = options.parse_seconds("--timeout", opts["timeout"])
                if timeout <= 0:
                    raise options.OptionError("--timeout must be above 0 seconds.")
            target = probe.target_from(options.merge(raw, given))
            outcome = probe.probe(target, as_json=opts["json"], full=opts["full"], timeout=timeout)
        except options.OptionError as err:
            raise CommandError(str(err)) from err
        except probe.ProbeFailed as failed:
            outcome = probe.Outcome(failed.code, "", str(failed))
        if outcome.output:
            self.stdout.write(outcome.output, ending="")
        if outcome.code != probe.EXIT_OK:
            self.stderr.write(outcome.line)
            sys.exit(outcome.code)

    def _announce(self, line: str) -> None:
        self.stdout.write(self.style.SUCCESS(line))
        self.stdout.flush()
