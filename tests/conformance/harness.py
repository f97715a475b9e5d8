"""The runner machinery both conformance suites share (test_conformance.py over WebSocket,
test_wt_conformance.py over WebTransport): the check registry, soft assertions and the --mutate
self-test, servers of their own on free loopback ports, the JWT secret, tokens minted with
`quiver token`, the watchdogs, one line per check and the summary, and keeping the server logs
when anything failed.

Nothing here speaks the protocol: each suite's client (qclient.py, wt_client.py) does, written
from PROTOCOL.md alone. Uses only the Python standard library.
"""
import argparse
import base64
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

# ---------------------------------------------------------------- checks and their assertions


class Checks(list):
    """The registry: `@check(name, server="a", timeout=None, slow=False)` appends a check.
    server names the suite's server the check talks to (None: its own or none); slow: the check
    mostly waits for a deadline and may run beside the others (where the runner can)."""

    def __init__(self, timeout):
        super().__init__()
        self.timeout = timeout

    def __call__(self, name, server="a", timeout=None, slow=False):
        def deco(f):
            self.append(dict(name=name, server=server, fn=f, slow=slow, doc=f.__doc__ or "",
                             timeout=self.timeout if timeout is None else timeout))
            return f
        return deco


def perturb(x):
    """An expectation flipped for --mutate: a number +1, a string extended, a boolean negated,
    a list's last element changed (or one added to an empty one)."""
    if isinstance(x, bool):
        return not x
    if isinstance(x, int):
        return x + 1
    if isinstance(x, str):
        return x + "~"
    if isinstance(x, bytes):
        return x + b"~"
    if isinstance(x, (list, tuple)):
        return type(x)(list(x[:-1]) + [perturb(x[-1])] if x else ["~"])
    if isinstance(x, set):
        return x | {"~"}
    if isinstance(x, dict):
        return dict(x, **{"~": 1})
    if x is None:
        return "~"
    return ("~", x)


def short(x, n=300):
    r = repr(x)
    return r if len(r) <= n else r[:n] + "…"


class Assertions:
    """What every check sees: its suite, its server, and soft assertions (a failed one is
    recorded and the check goes on, so its flow never depends on an expectation). With mutate N
    the N-th assertion's expectation is flipped."""

    def __init__(self, suite, server, mutate):
        self.suite, self.server, self.mutate = suite, server, mutate
        self.fails, self.n = [], 0

    def _flip(self):
        self.n += 1
        return self.mutate == self.n

    def eq(self, what, actual, expected):
        if self._flip():
            expected = perturb(expected)
        if actual != expected:
            self.fails.append(f"{what}: got {short(actual)}, want {short(expected)}")

    def true(self, what, cond, detail=None):
        want = not self._flip()
        if bool(cond) != want:
            self.fails.append(f"{what}: {'false' if want else 'true (flipped)'}"
                              + (f" ({short(detail)})" if detail is not None else ""))

    def tok(self, name):
        return self.suite.tokens[name]


def jwt_claims(token):
    p = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))


def verdict(x, timed_out, exc, timeout):
    """A check's problems: its failed assertions, then a timeout or an exception, or that it
    asserted nothing."""
    problems = list(x.fails)
    if timed_out:
        problems.append(f"timed out after {timeout:.0f} s")
    if exc:
        problems.append("exception: " + exc)
    if x.n == 0:
        problems.append("asserted nothing")
    return problems


def report(ch, res, args, failed, vacuous):
    """One line per check (and one per further problem): PASS/FAIL, or with --mutate ok (it
    failed when flipped), VACUOUS or skip."""
    problems, dt, n, tb = res
    name = ch["fn"].__name__
    label = f"{name} ({ch['name']})"
    if args.mutate:
        if not problems and n < args.mutate:
            print(f"skip  {name}: only {n} assertions", flush=True)
        elif problems:
            print(f"ok    {name}: fails when flipped: {problems[0]}", flush=True)
        else:
            print(f"VACUOUS {label}: still passes with assertion {args.mutate} flipped", flush=True)
            vacuous.append(label)
        return
    if problems:
        failed.append(label)
        print(f"FAIL  {label} [{dt:.1f} s]: {problems[0]}", flush=True)
        for p in problems[1:]:
            print(f"        {p}", flush=True)
        if tb and args.verbose:
            print(tb, flush=True)
    else:
        print(f"PASS  {name} [{dt:.1f} s, {n} assertions] {ch['name']}", flush=True)


# ---------------------------------------------------------------- servers and tokens


class Server:
    """`quiver serve` with a config of its own on free loopback ports; ready once it prints
    QUIVER_READY (http: "host:port" of the WebSocket listener, wt: (host, port) of the
    WebTransport one). Its stdout and stderr go to NAME.log in the work directory."""

    def __init__(self, name, quiver, workdir, config, secret_file):
        self.name = name
        cfg = os.path.join(workdir, f"{name}.toml")
        with open(cfg, "w") as f:
            f.write(config)
        self.log_path = os.path.join(workdir, f"{name}.log")
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [quiver, "serve", "--config", cfg, "--jwt-secret-file", secret_file,
             "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0",
             "--cert-dir", os.path.join(workdir, "certs")],
            stdout=subprocess.PIPE, stderr=self.log, cwd=workdir)
        self.http = self.wt = None
        ready = threading.Event()

        def pump():
            for line in self.proc.stdout:
                if line.startswith(b"QUIVER_READY ") and not ready.is_set():
                    info = json.loads(line.split(b" ", 1)[1])
                    self.http = info.get("http")
                    if info.get("webtransport"):
                        host, port = info["webtransport"].rsplit(":", 1)
                        self.wt = (host, int(port))
                    ready.set()
                self.log.write(line)
            ready.set()
        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(30) or not (self.http and self.wt):
            self.stop()
            raise RuntimeError(f"server {name} did not start; its log: {self.log_path}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(8)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class Suite:
    """The run's work directory, JWT secret (a file for the servers, bytes for forging), tokens
    by name, servers by name (and `extra`: ones a check starts and stops itself)."""

    def __init__(self, quiver, workdir):
        self.quiver, self.workdir = quiver, workdir
        self.secret = os.path.join(workdir, "secret")
        self.secret_bytes = os.urandom(24).hex().encode()
        with open(self.secret, "wb") as f:
            f.write(self.secret_bytes)
        self.tokens, self.servers, self.extra = {}, {}, []

    def mint(self, user, tenant, sub, pub, ttl="1h", secret=None):
        args = [self.quiver, "token", "--tenant", tenant, "--user", user, "--ttl", ttl,
                "--cert-dir", os.path.join(self.workdir, "certs")]
        args += ["--jwt-secret", secret] if secret else ["--jwt-secret-file", self.secret]
        if sub:
            args += ["--subscribe"] + sub
        if pub:
            args += ["--publish"] + pub
        return subprocess.check_output(args, cwd=self.workdir, timeout=20).decode().strip()

    def mint_all(self, jobs):
        """jobs: {name: mint's arguments}; a few `quiver token` at a time."""
        with ThreadPoolExecutor(max_workers=6) as pool:
            futures = {name: pool.submit(self.mint, *a) for name, a in jobs.items()}
            for name, f in futures.items():
                self.tokens[name] = f.result()

    def start(self, configs, need, jobs):
        """The servers of `configs` ({name: config}) that some check needs, started side by side
        while the tokens are minted."""
        started, starters = {}, {}
        for name, cfg in configs.items():
            if name in need:
                starters[name] = threading.Thread(target=lambda n=name, c=cfg: started.__setitem__(
                    n, Server(n, self.quiver, self.workdir, c, self.secret)))
                starters[name].start()
        try:
            self.mint_all(jobs)
        finally:
            for name, th in starters.items():
                th.join(35)
                if name in started:
                    self.servers[name] = started[name]
        for name in starters:
            if name not in self.servers:
                raise RuntimeError(f"server {name} did not start; logs in {self.workdir}")


# ---------------------------------------------------------------- the run


def main(doc, checks, configs, jobs, run, name, describe, list_width, suite_class=Suite,
         suite_timeout=150.0):
    """Parses the command line, starts the needed servers, mints `jobs`, calls
    run(suite, chosen, args, failed, vacuous), stops the servers and prints the summary: exit
    status 0 if every check passed (with --mutate: if every check failed when flipped).
    name prefixes the summary lines; describe(key, server) names a server in the first."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--quiver", default=os.path.join(ROOT, "target", "debug", "quiver"))
    ap.add_argument("--only", nargs="*", default=None, help="run the checks whose name holds any of these")
    ap.add_argument("--mutate", type=int, default=0, help="self-test: flip the N-th assertion of every check")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    chosen = [c for c in checks if not args.only or any(o in c["name"] or o in c["fn"].__name__ for o in args.only)]
    if args.list:
        for c in chosen:
            print(f"{c['fn'].__name__:{list_width}} {c['name']}")
        return 0
    t_start = time.monotonic()
    workdir = tempfile.mkdtemp(prefix=f"quiver-{name}-")
    args.quiver = os.path.abspath(args.quiver)
    suite = suite_class(args.quiver, workdir)

    def timed_out():
        print(f"FAIL  suite timed out after {suite_timeout:.0f} s; server logs in {workdir}", flush=True)
        for s in list(suite.servers.values()) + suite.extra:
            s.proc.kill()
        os._exit(2)
    watchdog = threading.Timer(suite_timeout, timed_out)
    watchdog.daemon = True
    watchdog.start()
    failed, vacuous = [], []
    try:
        suite.start(configs, {c["server"] for c in chosen if c["server"]}, jobs)
        print(f"{name}: {len(chosen)} checks; servers "
              + ", ".join(describe(k, s) for k, s in suite.servers.items())
              + (f"; self-test flipping assertion {args.mutate}" if args.mutate else ""), flush=True)
        run(suite, chosen, args, failed, vacuous)
    finally:
        for s in suite.servers.values():
            s.stop()
        dead = [f"{k} exited {s.proc.returncode}" for k, s in suite.servers.items()
                if s.proc.returncode not in (0, -15)]
    total = time.monotonic() - t_start
    if dead and not args.mutate:
        failed.append("server exit: " + ", ".join(dead))
        print("FAIL  server stop: " + ", ".join(dead), flush=True)
    bad = vacuous if args.mutate else failed
    if bad:
        print(f"{name}: {len(bad)} of {len(chosen)} checks "
              f"{'vacuous' if args.mutate else 'failed'} ({total:.1f} s); server logs in {workdir}", flush=True)
        return 1
    shutil.rmtree(workdir, ignore_errors=True)
    print(f"{name}: all {len(chosen)} checks {'fail when flipped' if args.mutate else 'passed'} ({total:.1f} s)", flush=True)
    return 0
