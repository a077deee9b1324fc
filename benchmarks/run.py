"""Measure runfcgi, gunicorn and uWSGI serving the same Django views behind the same nginx.

Every server runs with the same number of worker processes and listens on a unix socket;
one nginx on loopback gives each its own port. wrk loads one server at a time, servers
taking turns within each repetition so that machine drift hits all of them alike, and the
table shows the median of the repetitions. Each server is measured at the views and
numbers of connections that a comparison of benchmarks/targets.py needs (--grid: at all
of them), and the run ends with whether each target is met.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from benchmarks.targets import DEFAULT_SERVERS, DEFAULT_VIEWS, plan, summary, table, verdicts
from benchmarks.views import HELLO, MEGABYTE, SLEEP_SECONDS
from benchmarks.wrk import SLOW_MS, Cell, Scripts, parse_wrk, run_wrk

ROOT = Path(__file__).resolve().parent.parent
DOC_SOCKET = "/run/mysite/fcgi.sock"
DOC_LISTEN = "listen 80;"
WORKERS = 2
STOP_SECONDS = 5.0
# The scaling run: the 50 ms view at this many connections, pools of these sizes.
SCALING_CONNECTIONS = 64
SCALING_CHILDREN = "2,8,32"
# nginx's idle kept connections (keepalive N), below and above the WORKERS of runfcgi.
# uWSGI has no such row: its FastCGI mode ignores FCGI_KEEP_CONN and closes the
# connection after every request (proto/fastcgi.c, uWSGI 2.0.31).
KEEPALIVES = (1, 8)


@dataclass(frozen=True)
class View:
    name: str
    method: str
    path: str
    body_size: int = 0

    def check(self, status: int, body: bytes) -> str | None:
        """Why this answer is wrong, or None."""
        if status != 200:
            return f"status {status}"
        expected = {
            "hello": body == HELLO,
            "sleep": body == b"slept\n",
            "big": len(body) == MEGABYTE,
            "post": body == str(MEGABYTE).encode(),
        }[self.name]
        return None if expected else f"unexpected body of {len(body)} bytes: {body[:60]!r}"


VIEWS = {
    view.name: view
    for view in (
        View("hello", "GET", "/hello/"),
        View("sleep", "GET", "/sleep/"),
        View("big", "GET", "/big/"),
        View("post", "POST", "/sink/", MEGABYTE),
    )
}


def fastcgi_block(port: int, sock: Path, keepalive: int | None = None) -> str:
    """The documented nginx FastCGI recipe with only its addresses changed; with
    ``keepalive``, connections kept open as nginx's documentation configures it (an
    upstream with ``keepalive N`` and ``fastcgi_keep_conn on``)."""
    text = (ROOT / "docs" / "configs" / "nginx-fastcgi.conf").read_text()
    for old in (DOC_LISTEN, DOC_SOCKET):
        if old not in text:
            raise AssertionError(f"docs/configs/nginx-fastcgi.conf no longer contains {old!r}")
    text = text.replace(DOC_LISTEN, f"listen 127.0.0.1:{port};")
    if keepalive is None:
        return text.replace(DOC_SOCKET, str(sock))
    upstream = f"keep{port}"
    text = text.replace(
        f"fastcgi_pass unix:{DOC_SOCKET};",
        f"fastcgi_pass {upstream};\n        fastcgi_keep_conn on;",
    )
    return (
        f"upstream {upstream} {{\n    server unix:{sock};\n    keepalive {keepalive};\n}}\n{text}"
    )


def keep_conn(keepalive: int) -> Callable[[int, Path], str]:
    def block(port: int, sock: Path) -> str:
        return fastcgi_block(port, sock, keepalive)

    return block


def scgi_block(port: int, sock: Path) -> str:
    return f"""server {{
    listen 127.0.0.1:{port};
    location / {{
        include scgi_params;
        scgi_param SCRIPT_NAME "";
        scgi_param PATH_INFO $uri;
        scgi_param HTTP_HOST $http_host;
        scgi_pass unix:{sock};
    }}
}}
"""


def proxy_block(port: int, sock: Path) -> str:
    return f"""server {{
    listen 127.0.0.1:{port};
    location / {{
        proxy_set_header Host $http_host;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_pass http://unix:{sock};
    }}
}}
"""


def uwsgi_block(port: int, sock: Path) -> str:
    return f"""server {{
    listen 127.0.0.1:{port};
    location / {{
        include uwsgi_params;
        uwsgi_pass unix:{sock};
    }}
}}
"""


def tool(name: str) -> str:
    """A console script of the Python running the benchmark, else one on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise SystemExit(f"{name} is not installed; scripts/bench installs what it needs.")
    return found


def runfcgi(
    protocol: str, method: str, workers: int = WORKERS, *, growing: bool = False
) -> Callable[[Path], list[str]]:
    """A prefork pool of exactly ``workers``; with ``growing``, the default spare settings
    and a pool (prefork or threaded) that may grow to ``workers``."""

    def command(sock: Path) -> list[str]:
        words = [f"protocol={protocol}", f"method={method}", f"socket={sock}", "daemonize=false"]
        if growing:
            words.append(f"maxchildren={workers}")
        elif method == "prefork":
            words += [f"minspare={workers}", f"maxspare={workers}", f"maxchildren={workers}"]
        return [sys.executable, str(ROOT / "testproject" / "manage.py"), "runfcgi", *words]

    return command


def gunicorn(sock: Path) -> list[str]:
    return [
        tool("gunicorn"),
        f"--workers={WORKERS}",
        f"--bind=unix:{sock}",
        "--worker-class=sync",
        "benchmarks.wsgi:application",
    ]


def uwsgi(option: str) -> Callable[[Path], list[str]]:
    def command(sock: Path) -> list[str]:
        return [
            tool("uwsgi"),
            f"--{option}={sock}",
            "--master",
            f"--processes={WORKERS}",
            "--module=benchmarks.wsgi:application",
            "--need-app",
            "--die-on-term",
            "--disable-logging",
            "--chmod-socket=666",
        ]

    return command


@dataclass(frozen=True)
class ServerSpec:
    name: str
    command: Callable[[Path], list[str]]
    block: Callable[[int, Path], str]
    note: str


SERVERS = {
    spec.name: spec
    for spec in (
        ServerSpec(
            "runfcgi-fcgi-prefork",
            runfcgi("fcgi", "prefork"),
            fastcgi_block,
            f"{WORKERS} worker processes, a new FastCGI connection per request",
        ),
        *(
            ServerSpec(
                f"runfcgi-fcgi-keepconn-{keepalive}",
                runfcgi("fcgi", "prefork"),
                keep_conn(keepalive),
                f"{WORKERS} worker processes, fastcgi_keep_conn on, keepalive {keepalive}"
                f" ({'below' if keepalive < WORKERS else 'above'} the {WORKERS} workers)",
            )
            for keepalive in KEEPALIVES
        ),
        ServerSpec(
            "runfcgi-scgi-prefork",
            runfcgi("scgi", "prefork"),
            scgi_block,
            f"{WORKERS} worker processes",
        ),
        ServerSpec(
            "runfcgi-fcgi-threaded",
            runfcgi("fcgi", "threaded"),
            fastcgi_block,
            "one process, default thread pool (maxchildren=50)",
        ),
        ServerSpec(
            "runfcgi-fcgi-prefork-1",
            runfcgi("fcgi", "prefork", workers=1),
            fastcgi_block,
            "1 worker process: what the threaded server's one process is compared with",
        ),
        ServerSpec("gunicorn-sync", gunicorn, proxy_block, f"{WORKERS} sync workers, proxy_pass"),
        ServerSpec(
            "uwsgi-fastcgi",
            uwsgi("fastcgi-socket"),
            fastcgi_block,
            f"--master --processes={WORKERS} --fastcgi-socket",
        ),
        ServerSpec(
            "uwsgi-scgi",
            uwsgi("scgi-socket"),
            scgi_block,
            f"--master --processes={WORKERS} --scgi-socket, scgi_pass",
        ),
        ServerSpec(
            "uwsgi-native",
            uwsgi("socket"),
            uwsgi_block,
            f"--master --processes={WORKERS} --socket, uwsgi_pass",
        ),
    )
}


def scaling_specs(children: list[int]) -> dict[str, ServerSpec]:
    """runfcgi prefork and threaded, each with pools that may grow to each size."""
    specs = {}
    for method in ("prefork", "threaded"):
        for count in children:
            unit = "processes" if method == "prefork" else "threads"
            spec = ServerSpec(
                f"runfcgi-{method}-max{count}",
                runfcgi("fcgi", method, count, growing=True),
                fastcgi_block,
                f"up to {count} {unit} (maxchildren={count}), default minspare and maxspare",
            )
            specs[spec.name] = spec
    return specs


def stop_group(proc: subprocess.Popen[bytes], first: signal.Signals) -> None:
    """Signal the process group, then kill it if it has not gone within STOP_SECONDS."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, first)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(STOP_SECONDS)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(STOP_SECONDS)


def start_group(command: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
            start_new_session=True,
        )


def wait_until(
    ready: Callable[[], bool], proc: subprocess.Popen[bytes], log: Path, what: str
) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log.read_text()}")
        if ready():
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} was not ready within 30 s:\n{log.read_text()}")


def accepts_unix(path: Path) -> Callable[[], bool]:
    def ready() -> bool:
        with socket.socket(socket.AF_UNIX) as probe:
            return probe.connect_ex(str(path)) == 0

    return ready


def accepts_tcp(port: int) -> Callable[[], bool]:
    def ready() -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", port)) == 0

    return ready


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


@dataclass
class Backend:
    spec: ServerSpec
    sock: Path
    port: int
    proc: subprocess.Popen[bytes]
    nginx_pid: int = 0

    def workers(self) -> list[int]:
        """The processes that serve requests: the children, or the process itself."""
        return children(self.proc.pid) or [self.proc.pid]

    def reset_peak_rss(self) -> None:
        for pid in self.workers():
            with contextlib.suppress(OSError):
                Path(f"/proc/{pid}/clear_refs").write_text("5")

    def peak_rss_mb(self) -> float:
        peaks = [0]
        for pid in self.workers():
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peaks.append(int(line.split()[1]))
        return max(peaks) / 1024


def nginx_config(directory: Path, blocks: list[str]) -> str:
    user = ""
    if os.geteuid() == 0:
        user = f"user {pwd.getpwuid(os.getuid()).pw_name};"
    temp = directory / "temp"
    servers = "\n".join(blocks)
    return f"""
{user}
worker_processes 1;
daemon off;
pid {directory}/nginx.pid;
error_log {directory}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_max_body_size 4m;
    client_body_buffer_size 2m;
    client_body_temp_path {temp}/body;
    fastcgi_temp_path {temp}/fastcgi;
    scgi_temp_path {temp}/scgi;
    uwsgi_temp_path {temp}/uwsgi;
    proxy_temp_path {temp}/proxy;
{servers}
}}
"""


@contextlib.contextmanager
def serving(
    names: list[str], directory: Path, specs: dict[str, ServerSpec] = SERVERS
) -> Iterator[dict[str, Backend]]:
    """Every server and one nginx in front of them; all stopped on the way out."""
    env = dict(os.environ)
    env["DJANGO_SETTINGS_MODULE"] = "benchmarks.settings"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "testproject")])
    env.pop("PYTHONDEVMODE", None)
    started: list[subprocess.Popen[bytes]] = []
    nginx: subprocess.Popen[bytes] | None = None
    try:
        backends = {}
        for number, name in enumerate(names):
            spec = specs[name]
            sock = directory / f"s{number}.sock"
            log = directory / f"{name}.log"
            proc = start_group(spec.command(sock), log, env)
            started.append(proc)
            backends[name] = Backend(spec, sock, free_port(), proc)
        for name, backend in backends.items():
            log = directory / f"{name}.log"
            wait_until(accepts_unix(backend.sock), backend.proc, log, name)
        (directory / "temp").mkdir()
        for params in ("fastcgi_params", "scgi_params", "uwsgi_params"):
            shutil.copy(Path("/etc/nginx") / params, directory / params)
        conf = directory / "nginx.conf"
        blocks = [b.spec.block(b.port, b.sock) for b in backends.values()]
        conf.write_text(nginx_config(directory, blocks))
        log = directory / "nginx.log"
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        nginx = start_group([binary, "-p", str(directory), "-c", str(conf)], log, env)
        for backend in backends.values():
            wait_until(accepts_tcp(backend.port), nginx, log, "nginx")
            backend.nginx_pid = nginx.pid
        yield backends
    finally:
        # A second Control-C or TERM must not cut the clean-up short: it is bounded.
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            if nginx is not None:
                stop_group(nginx, signal.SIGQUIT)
            for proc in started:
                stop_group(proc, signal.SIGTERM)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def fetch(port: int, view: View) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        body = b"x" * view.body_size if view.method == "POST" else None
        headers = {"Content-Type": "application/octet-stream"} if body else {}
        conn.request(view.method, view.path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def check_answers(backends: dict[str, Backend], views: list[View]) -> list[str]:
    problems = []
    for name, backend in backends.items():
        for view in views:
            for _ in range(3):  # each worker, roughly, and warms imports and caches
                status, body = fetch(backend.port, view)
                problem = view.check(status, body)
                if problem:
                    problems.append(f"{name} {view.path}: {problem}")
                    break
    return problems


def ceiling(views: list[View], seconds: float, directory: Path) -> dict[str, float]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "testproject")])
    env["DJANGO_SETTINGS_MODULE"] = "benchmarks.settings"
    env.pop("PYTHONDEVMODE", None)
    log = directory / "ceiling.log"
    command = [sys.executable, "-m", "benchmarks.ceiling", f"--seconds={seconds}"]
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [*command, *(v.name for v in views)],
            stdout=subprocess.PIPE,
            stderr=err,
            env=env,
            cwd=ROOT,
            start_new_session=True,
        )
        try:
            out, _ = proc.communicate(timeout=seconds * len(views) + 60)
        finally:
            stop_group(proc, signal.SIGTERM)
    if proc.returncode != 0:
        raise RuntimeError(f"the in-process measurement failed:\n{log.read_text()}")
    result: dict[str, float] = json.loads(out)
    return result


def measure(
    backends: dict[str, Backend],
    view: View,
    wanted: set[tuple[str, int]],
    *,
    seconds: int,
    repeat: int,
    scripts: Scripts,
    progress: Callable[[str], None],
) -> list[Cell]:
    """One view, the servers taking turns at each number of connections; only the
    (server, connections) cells wanted."""
    cells = {(name, level): Cell(name, view.name, level) for name, level in wanted}
    order = list(backends)
    for round_ in range(repeat):
        for level in sorted({level for _, level in wanted}):
            for name in order:
                if (name, level) not in cells:
                    continue
                backend = backends[name]
                backend.reset_peak_rss()
                output = run_wrk(backend.port, view.path, level, seconds, scripts.of(view.method))
                sample = replace(parse_wrk(output), rss_mb=backend.peak_rss_mb())
                cells[name, level].samples.append(sample)
                progress(
                    f"[{round_ + 1}/{repeat}] {name:24} {view.name:5} c={level:<3}"
                    f" {sample.rps:9.1f} req/s p99 {sample.p99_ms:8.2f} ms"
                    f" max {sample.max_ms:8.1f} ms errors {sample.errors}"
                )
            order = order[1:] + order[:1]  # a different server goes first each time
    return sorted(cells.values(), key=lambda c: (c.connections, list(backends).index(c.server)))


def ratio(value: float, base: float | None) -> str:
    return f"{value / base:.2f}x" if base else "-"


def ceiling_table(ceilings: dict[str, float]) -> str:
    lines = ["Django's WSGI handler in-process, no server (requests/s on one core):"]
    lines.extend(f"  {view:5} {rps:9.1f}" for view, rps in ceilings.items())
    return "\n".join(lines)


def scaling_table(cells: list[Cell]) -> str:
    """Each pool against what its size allows: every request waits SLEEP_SECONDS."""
    head = (
        f"{'server':24} {'conns':>5} {'req/s':>9} {'ideal':>7} {'/ideal':>7}"
        f" {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}"
    )
    lines = [head, "-" * len(head)]
    for cell in cells:
        s = cell.summary()
        size = int(cell.server.rsplit("max", 1)[1])
        ideal = min(size, cell.connections) / SLEEP_SECONDS
        lines.append(
            f"{cell.server:24} {cell.connections:>5} {s['rps']:>9.1f} {ideal:>7.0f}"
            f" {ratio(float(s['rps']), ideal):>7} {s['p50_ms']:>8.2f} {s['p99_ms']:>8.2f}"
            f" {s['errors']:>6}"
        )
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    import django

    info: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "django": django.get_version(),
        "platform": platform.platform(),
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    for name, command in {
        "nginx": [shutil.which("nginx") or "/usr/sbin/nginx", "-v"],
        "gunicorn": [tool("gunicorn"), "--version"],
        "uwsgi": [tool("uwsgi"), "--version"],
        "wrk": [shutil.which("wrk") or "/usr/bin/wrk", "--version"],
    }.items():
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
            info[name] = (done.stdout + done.stderr).strip().splitlines()[0]
    return info


def arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__)
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="every server once at 16 connections for 1 s, on the views its comparisons"
        " use, the answers of every view checked; fail on any error",
    )
    parser.add_argument("--duration", type=int, default=3, help="seconds per wrk run (3)")
    parser.add_argument(
        "--repeat", type=int, default=5, help="repetitions; the median is shown (5)"
    )
    parser.add_argument(
        "--connections", default="1,16,64", help="concurrency levels, comma-separated (1,16,64)"
    )
    parser.add_argument(
        "--views",
        help=f"from {','.join(VIEWS)} (default: those the targets use, {','.join(DEFAULT_VIEWS)})",
    )
    parser.add_argument(
        "--servers",
        help=f"from {','.join(SERVERS)} (default: those the targets compare,"
        f" {','.join(DEFAULT_SERVERS)})",
    )
    parser.add_argument(
        "--grid",
        action="store_true",
        help="measure every chosen server at every chosen view and concurrency, not only"
        " the cells that a comparison uses",
    )
    parser.add_argument("--no-ceiling", action="store_true", help="skip the in-process handler")
    parser.add_argument(
        "--scaling",
        default=SCALING_CHILDREN,
        metavar="SIZES",
        help=f"pool sizes (maxchildren) for the 50 ms view at {SCALING_CONNECTIONS} connections,"
        f" comma-separated ({SCALING_CHILDREN}); empty to skip",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results here")
    parser.add_argument(
        "--serve",
        type=int,
        metavar="SECONDS",
        help="start everything, print the ports and worker pids, and wait (for profiling)",
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.duration, args.repeat, args.connections = 1, 1, "16"
        args.scaling = "4" if args.scaling else ""
    args.scaling_children = [int(n) for n in args.scaling.split(",") if n]
    args.levels = [int(n) for n in args.connections.split(",")]
    everything = args.smoke or args.serve
    views = args.views.split(",") if args.views else list(VIEWS if everything else DEFAULT_VIEWS)
    servers = (
        args.servers.split(",")
        if args.servers
        else list(SERVERS if everything else DEFAULT_SERVERS)
    )
    for kind, chosen, known in (("views", views, VIEWS), ("servers", servers, SERVERS)):
        unknown = set(chosen) - set(known)
        if unknown:
            parser.error(f"unknown {kind} {sorted(unknown)}; choose from {','.join(known)}")
    args.view_list = [VIEWS[name] for name in views]
    args.server_list = servers
    args.planned = plan(servers, views, args.levels, grid=args.grid)
    if args.serve:
        return args
    for kind, given, position in (("view", args.views, 1), ("server", args.servers, 0)):
        named = given.split(",") if given else []
        idle = [name for name in named if all(cell[position] != name for cell in args.planned)]
        if idle:
            parser.error(
                f"no comparison measures the {kind} {', '.join(idle)} with these"
                " servers, views and connections; add --grid to measure every combination"
            )
    if not args.planned:
        parser.error("nothing to measure; add --grid to measure every combination")
    return args


def estimate_minutes(args: argparse.Namespace) -> float:
    """How long the run takes: wrk's time, the warm-ups and a guess at the start-ups."""
    views = {view for _, view, _ in args.planned}
    groups = 1 if args.smoke else len(views)
    warm = 0 if args.smoke else len({(server, view) for server, view, _ in args.planned})
    seconds = len(args.planned) * args.repeat * (args.duration + 0.2) + warm + 10 * groups
    if args.scaling_children:
        sizes = 2 * len(args.scaling_children)
        seconds += sizes * (args.repeat * (args.duration + 0.2) + (0 if args.smoke else 1)) + 10
    if not args.no_ceiling:
        seconds += len(args.view_list) * (0.5 if args.smoke else 2.0) + 5
    return float(seconds) / 60


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    started = time.monotonic()

    def progress(message: str) -> None:
        print(f"{time.monotonic() - started:7.1f}s {message}", file=sys.stderr, flush=True)

    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    directory = Path(tempfile.mkdtemp(prefix="bench-", dir="/tmp"))
    try:
        info = machine()
        if args.serve:
            progress(f"starting {', '.join(args.server_list)} in {directory}")
            with serving(args.server_list, directory) as backends:
                problems = check_answers(backends, args.view_list)
                for name, backend in backends.items():
                    print(f"{name}: http://127.0.0.1:{backend.port} workers {backend.workers()}")
                print("\n".join(problems) or "all answers correct", flush=True)
                time.sleep(args.serve)
            return 0
        progress(
            f"{len(args.planned)} cells, {args.repeat} x {args.duration} s each:"
            f" about {estimate_minutes(args):.0f} min; working in {directory}"
        )
        cells = []
        scripts = Scripts.write(directory)
        # Fresh servers for each view, so that a worker's peak memory is that view's;
        # the smoke test only checks that everything works, with one start for all.
        groups = [args.view_list] if args.smoke else [[view] for view in args.view_list]
        for views in groups:
            names = [
                name
                for name in args.server_list
                if any((name, view.name, n) in args.planned for view in views for n in args.levels)
            ]
            if not names:
                continue
            place = directory / views[0].name
            place.mkdir()
            progress(f"starting {', '.join(names)}")
            with serving(names, place) as backends:
                problems = check_answers(backends, views)
                if problems:
                    print("\n".join(["Wrong answers:", *problems]), file=sys.stderr)
                    return 1
                for view in views:
                    wanted = {(s, n) for s, v, n in args.planned if v == view.name}
                    if not args.smoke:  # fresh processes: the first requests fill caches
                        for name in sorted({s for s, _ in wanted}):
                            level = max(n for s, n in wanted if s == name)
                            run_wrk(
                                backends[name].port, view.path, level, 1, scripts.of(view.method)
                            )
                    cells += measure(
                        backends,
                        view,
                        wanted,
                        seconds=args.duration,
                        repeat=args.repeat,
                        scripts=scripts,
                        progress=progress,
                    )
        scaling: list[Cell] = []
        if args.scaling_children:
            specs = scaling_specs(args.scaling_children)
            place = directory / "scaling"
            place.mkdir()
            sleep = VIEWS["sleep"]
            with serving(list(specs), place, specs) as backends:
                problems = check_answers(backends, [sleep])
                if problems:
                    print("\n".join(["Wrong answers:", *problems]), file=sys.stderr)
                    return 1
                if not args.smoke:
                    for backend in backends.values():
                        run_wrk(backend.port, sleep.path, SCALING_CONNECTIONS, 1, scripts.get)
                scaling = measure(
                    backends,
                    sleep,
                    {(name, SCALING_CONNECTIONS) for name in backends},
                    seconds=args.duration,
                    repeat=args.repeat,
                    scripts=scripts,
                    progress=progress,
                )
        ceilings = {}
        if not args.no_ceiling:
            ceilings = ceiling(args.view_list, 0.5 if args.smoke else 2.0, directory)
        results = verdicts(cells)
        versions = f"Python {info['python']}, Django {info['django']}"
        print(f"{info['date']}, {info['cpus']} CPUs, {versions}")
        print(f"{args.repeat} x {args.duration} s per cell, {WORKERS} workers per server\n")
        print(table(cells))
        if ceilings:
            print(f"\n{ceiling_table(ceilings)}")
        if scaling:
            print(
                f"\nScaling: the {SLEEP_SECONDS * 1000:.0f} ms view at {SCALING_CONNECTIONS}"
                " connections; ideal is min(maxchildren, connections) / 50 ms\n"
            )
            print(scaling_table(scaling))
        print(f"\n{summary(results)}")
        if args.json:
            args.json.write_text(
                json.dumps(
                    {
                        "machine": info,
                        "duration": args.duration,
                        "repeat": args.repeat,
                        "workers": WORKERS,
                        "slow_ms": SLOW_MS,
                        "servers": {n: SERVERS[n].note for n in args.server_list},
                        "ceiling_rps_per_core": ceilings,
                        "cells": [
                            {
                                "server": c.server,
                                "view": c.view,
                                "connections": c.connections,
                                **c.summary(),
                                "samples": [asdict(s) for s in c.samples],
                            }
                            for c in cells
                        ],
                        "scaling": [
                            {"server": c.server, "connections": c.connections, **c.summary()}
                            for c in scaling
                        ],
                        "targets": [verdict.as_dict() for verdict in results],
                    },
                    indent=2,
                )
                + "\n"
            )
        failed = [
            c for c in [*cells, *scaling] if c.summary()["errors"] or not c.summary()["requests"]
        ]
        if args.smoke and failed:
            for c in failed:
                print(f"FAILED: {c.server} {c.view}: {c.summary()}", file=sys.stderr)
            return 1
        progress("done")
        return 0
    except KeyboardInterrupt:
        print("interrupted; servers stopped", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(directory, ignore_errors=True)
