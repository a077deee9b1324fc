"""``manage.py runfcgi``: Django 1.8's command, with its options in both forms, and the
actions that inspect and control a server (``config``, ``check``, ``status``,
``stop``, ``reload``, ``reopen``)."""

from __future__ import annotations

import sys
from argparse import ArgumentParser, Namespace
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from django.core import checks
from django.core.management.base import BaseCommand, CommandError, CommandParser

from django_runfcgi import conf, control, effective, options, reload
from django_runfcgi.addresses import TCP, Inherited, Unix
from django_runfcgi.lifecycle import StartupError, serve, verify
from django_runfcgi.protocols import NAMES as PROTOCOL_NAMES
from django_runfcgi.status import probe
from django_runfcgi.status.probe import DEFAULT_TIMEOUT

ACTIONS = ("config", "check", "status", "stop", "reload", "reopen")
CONTROL = ("stop", "reload", "reopen")


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


def split_action(words: Iterable[str]) -> tuple[str | None, list[str]]:
    """The action word (``check``, ``stop``...) among the option words, and the others."""
    actions = [word for word in words if word in ACTIONS]
    if len(actions) > 1:
        raise options.OptionError(
            f"Give one action at a time, not {' and '.join(repr(a) for a in actions)}."
        )
    return (actions[0] if actions else None), [word for word in words if word not in ACTIONS]


def system_check_lines() -> tuple[list[str], list[str]]:
    """Django's system checks, as ``manage.py check`` runs them: the errors and the
    warnings, one line each."""
    errors: list[str] = []
    warnings: list[str] = []
    for message in checks.run_checks(include_deployment_checks=False):
        if message.is_silenced():
            continue
        (errors if message.is_serious() else warnings).append(system_check_line(message))
    return errors, warnings


def system_check_line(message: checks.CheckMessage) -> str:
    return " ".join(str(message).replace("\n\tHINT: ", " HINT: ").split("\n"))


class Command(BaseCommand):
    help = (
        "Serve this project over FastCGI, SCGI or AJP 1.3 through flup. Options are "
        "given as key=value words (as in Django 1.8) or as --key value, over the "
        "defaults in settings.RUNFCGI; 'manage.py runfcgi help' lists them. "
        "'runfcgi config' shows the options in effect, 'runfcgi check' checks them "
        "without serving, 'runfcgi status' asks the running server for its status page, "
        "'runfcgi stop|reload|reopen' controls the server a pidfile names, or the one "
        "listening on socket= or host= and port=."
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
            help="Options in the historic form, e.g. protocol=scgi port=8025; 'help'; or "
            "an action first: config, check, status, stop, reload, reopen.",
        )
        parser.add_argument(
            "--json",
            action="store_true",
            help="With config: print the options as JSON; with status: the status page.",
        )
        parser.add_argument(
            "--full", action="store_true", help="With status: one entry per worker (?full)."
        )
        parser.add_argument(
            "--timeout",
            default=None,
            metavar="SECONDS",
            help=f"With status: how long to wait for the server (default: {DEFAULT_TIMEOUT:g}).",
        )
        parser.add_argument(
            "--now",
            action="store_true",
            help="With stop: send INT (stop now) instead of TERM (finish the requests).",
        )
        options.add_arguments(parser)

    def execute(self, *args: Any, **opts: Any) -> Any:
        """The server runs Django's system checks first (BaseCommand does); ``check``
        and a reload's check run them themselves, to say each in one line; ``config``
        and the control commands do not need them."""
        try:
            action, _ = split_action(opts.get("words", ()))
        except options.OptionError as err:
            raise CommandError(str(err)) from err
        if action is not None or reload.checking():
            opts["skip_checks"] = True
        return super().execute(*args, **opts)

    def handle(self, *args: Any, **opts: Any) -> None:
        try:
            action, rest = split_action(opts.get("words", ()))
            if action == "status":
                self._only_with(action, opts)
                self._probe(rest, opts)
                return
            words, wants_help = options.parse_words(rest)
            if wants_help:
                self.stdout.write(options.help_text())
                return
            self._only_with(action, opts)
            given = {name: opts[name] for name in options.BY_NAME if name in opts}
            # runfastcgi() passes Python-typed keyword arguments through here.
            command_line = options.merge(words, given, opts.get("python_values", {}))
            if action == "check":
                self._check(command_line)
                return
            if reload.checking():
                errors, _ = system_check_lines()
                if errors:
                    raise CommandError(errors[0])
            raw, sources = options.layer(conf.runfcgi_options(), command_line)
            config = options.resolve(raw)
            if action == "config":
                shown = effective.values(config, raw, Path.cwd())
                show = effective.as_json if opts["json"] else effective.as_text
                self.stdout.write(show(shown, sources))
            elif action in CONTROL:
                self.stdout.write(self._control(action, config, now=opts["now"]))
            else:
                serve(config, self._announce if opts["verbosity"] >= 1 else lambda _: None)
        except (options.OptionError, StartupError, control.ControlError) as err:
            raise CommandError(str(err)) from err

    @staticmethod
    def _only_with(action: str | None, opts: dict[str, Any]) -> None:
        for flag, applies in (
            ("json", ("config", "status")),
            ("full", ("status",)),
            ("timeout", ("status",)),
            ("now", ("stop",)),
        ):
            if opts.get(flag) not in (None, False) and action not in applies:
                names = " and ".join(f"'runfcgi {name}'" for name in applies)
                raise options.OptionError(f"--{flag} applies to {names} only.")

    def _probe(self, words: list[str], opts: dict[str, Any]) -> None:
        """``runfcgi status``: print the server's status page, or say in one line why
        not and exit with the reason's status (status/probe.py). The server is found by
        the options it was started with, over the defaults in settings.RUNFCGI."""
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
            layered, _ = options.layer(conf.runfcgi_options(), options.merge(raw, given))
            target = probe.target_from(layered)
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

    def _check(self, command_line: dict[str, object]) -> None:
        """Everything a start checks before serving, each problem in one line."""
        problems, warnings = system_check_lines()
        running = None
        config = None
        settings_problems = conf.problems()
        # Said by the system checks, unless SILENCED_SYSTEM_CHECKS hides them there: a
        # start still refuses them.
        problems += [
            line
            for line in (
                system_check_line(checks.Error(found.message, hint=found.hint, id=found.id))
                for found in settings_problems
            )
            if line not in problems
        ]
        if not settings_problems:
            try:
                raw, _ = options.layer(conf.runfcgi_options(), command_line)
                config = options.resolve(raw)
            except options.OptionError as err:
                problems.append(str(err))
        if config is not None:
            running = control.running(config.pidfile) if config.pidfile is not None else None
            problems += verify(config, running)
        for line in warnings:
            self.stderr.write(f"Warning: {line}", self.style.WARNING)
        if problems or config is None:
            for line in problems:
                self.stderr.write(line, self.style.ERROR)
            count = f"{len(problems)} problem" + ("s" if len(problems) != 1 else "")
            raise CommandError(f"{count} found: runfcgi would not start.")
        if running is not None:
            self.stdout.write(
                f"runfcgi runs as PID {running} (pidfile {str(config.pidfile)!r}); its "
                "pidfile and address are free for this start once it stops."
            )
        where = (
            "the socket it is passed (systemd, or the web server on fd 0)"
            if isinstance(config.bind, Inherited)
            else str(config.bind)
        )
        self.stdout.write(
            self.style.SUCCESS(
                f"OK: runfcgi would serve over {PROTOCOL_NAMES[config.protocol]} "
                f"({config.method}) on {where}."
            )
        )

    @staticmethod
    def _control(action: str, config: options.Config, now: bool) -> str:
        """The server is the one the pidfile names, else the one listening on socket=
        or host= and port=."""
        if config.pidfile is not None:
            server = control.find(config.pidfile)
        elif isinstance(config.bind, (TCP, Unix)):
            server = control.find_listening(config.bind)
        else:
            raise options.OptionError(
                f"runfcgi {action} finds the server by its pidfile or its address: give "
                'pidfile=, socket= or host= and port= (or "pidfile" in settings.RUNFCGI).'
            )
        if action == "stop":
            return control.stop(server, now, config.shutdowntimeout)
        if action == "reload":
            return control.reload(server)
        return control.reopen(server)

    def _announce(self, line: str) -> None:
        self.stdout.write(self.style.SUCCESS(line))
        self.stdout.flush()
