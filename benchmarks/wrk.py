"""Load one URL with wrk and read what it reports.

wrk prints requests/s, percentiles and error counts. A ``done()`` hook in the Lua script
that every run loads adds the slowest request in microseconds and the share of requests
slower than SLOW_MS, read from the same latency distribution as wrk's percentiles.

wrk 4 adds to that distribution, after the run, the requests that a connection stuck on
a slow answer would have sent meanwhile (its correction for coordinated omission): the
share is of that distribution, not of the requests answered. The slowest request is a
real one, as the additions are all faster than the answer they stand in for.
"""

from __future__ import annotations

import re
import shutil
import statistics
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.views import MEGABYTE

# Requests slower than this are counted apart: a front end's user has given up by then.
SLOW_MS = 2000
# Requests still unanswered after this long are wrk timeouts: errors, not latencies.
TIMEOUT_SECONDS = 10

# percentile(p) is the latency at rank round(p / 100 * n + 0.5) of the n in the
# distribution, and 0 past the last one: bisecting on p for the first latency over the
# limit leaves 100 - p percent above it.
DONE = f"""
done = function(summary, latency, requests)
    local limit = {SLOW_MS * 1000}
    local share = 0
    if latency.min > limit then
        share = 100
    elseif latency.max > limit then
        local lo, hi = 0, 100
        for _ = 1, 30 do
            local mid = (lo + hi) / 2
            local value = latency:percentile(mid)
            if value > limit or value == 0 then
                hi = mid
            else
                lo = mid
            end
        end
        share = 100 - hi
    end
    io.write(string.format("Slowest: %d us, over {SLOW_MS} ms: %.6f%%\\n", latency.max, share))
end
"""

POST = f"""
wrk.method = "POST"
wrk.body = string.rep("x", {MEGABYTE})
wrk.headers["Content-Type"] = "application/octet-stream"
"""


@dataclass(frozen=True)
class Scripts:
    """The Lua files wrk loads: one for GET views, one that also sends a 1 MB body."""

    get: Path
    post: Path

    @classmethod
    def write(cls, directory: Path) -> Scripts:
        get, post = directory / "get.lua", directory / "post.lua"
        get.write_text(DONE)
        post.write_text(POST + DONE)
        return cls(get, post)

    def of(self, method: str) -> Path:
        return self.post if method == "POST" else self.get


@dataclass(frozen=True)
class Sample:
    """One wrk run against one server."""

    rps: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    slow_pct: float
    """Percent of the latency distribution above SLOW_MS."""
    errors: int
    """Socket errors (wrk's timeouts among them) and answers other than 2xx/3xx."""
    requests: int
    rss_mb: float = 0.0


UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(f"unreadable latency {text!r}")
    return float(match[1]) * UNITS[match[2]]


def parse_wrk(output: str) -> Sample:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    requests = re.search(r"(\d+) requests in", output)
    slowest = re.search(rf"Slowest: (\d+) us, over {SLOW_MS} ms: ([\d.]+)%", output)
    if rps is None or requests is None or slowest is None:
        raise RuntimeError(f"wrk said:\n{output}")
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.MULTILINE)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.MULTILINE)
    errors = 0
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if sockets:
        errors += sum(int(n) for n in sockets.groups())
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non2xx:
        errors += int(non2xx[1])
    return Sample(
        rps=float(rps[1]),
        p50_ms=_ms(p50[1]) if p50 else float("nan"),
        p99_ms=_ms(p99[1]) if p99 else float("nan"),
        max_ms=int(slowest[1]) / 1000,
        slow_pct=float(slowest[2]),
        errors=errors,
        requests=int(requests[1]),
    )


def run_wrk(port: int, path: str, connections: int, seconds: int, script: Path) -> str:
    command = [
        shutil.which("wrk") or "/usr/bin/wrk",
        f"--threads={min(2, connections)}",
        f"--connections={connections}",
        f"--duration={seconds}s",
        f"--timeout={TIMEOUT_SECONDS}s",
        "--latency",
        f"--script={script}",
        f"http://127.0.0.1:{port}{path}",
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + 30, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr}{done.stdout}")
    return done.stdout


@dataclass
class Cell:
    """The repetitions of one server, view and number of connections."""

    server: str
    view: str
    connections: int
    samples: list[Sample] = field(default_factory=list)

    def summary(self) -> dict[str, float | int]:
        """Medians of the rates and the latency distributions; the slowest request of
        all runs; counts summed."""

        def median(attr: str) -> float:
            return float(statistics.median(getattr(s, attr) for s in self.samples))

        return {
            "rps": median("rps"),
            "p50_ms": median("p50_ms"),
            "p99_ms": median("p99_ms"),
            "max_ms": max(s.max_ms for s in self.samples),
            "slow_pct": median("slow_pct"),
            "errors": sum(s.errors for s in self.samples),
            "requests": sum(s.requests for s in self.samples),
            "rss_mb": max(s.rss_mb for s in self.samples),
        }
