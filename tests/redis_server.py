"""Find or start the Redis the test suite runs against; shared by `make test` and plain pytest.

Which Redis (first match wins):

1. ``CASCADE_TEST_REDIS_URL`` if set and non-empty (used as given; it must answer PING).
2. The Redis on ``127.0.0.1:6379`` if it answers PING within a short timeout, unless
   ``CASCADE_TEST_NO_LOCAL_REDIS=1`` (skip this probe, e.g. to exercise the path below). Other
   programs may use that server, so the session claims a database of its own (an empty one, 15
   down to 1, marked with an owner key; ``claim_database``) and empties it when it ends. kombu's
   keys (``unacked``, bindings) are per database, so the suite's short visibility timeouts never
   restore another program's messages.
3. Otherwise tests/conftest.py starts a private ``redis-server`` on a free port for the session
   (``start_redis_server``) and stops it at session end.

``python -m tests.redis_server --ensure-binary`` (run by ``make test`` before pytest) makes sure
case 3 can work: if no URL is found and ``redis-server`` is missing, it installs Debian's
``redis-server`` with apt-get (root only) and exits non-zero with a clear message if it cannot.
"""

from __future__ import annotations

import argparse
import atexit
import ctypes
import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import redis

ENV_URL = "CASCADE_TEST_REDIS_URL"
ENV_NO_LOCAL = "CASCADE_TEST_NO_LOCAL_REDIS"
LOCAL_URL = "redis://127.0.0.1:6379/0"
OWNER_KEY = "cascade-test:owner"      # in a claimed database: the pid of the test session using it
PROBE_TIMEOUT_S = 0.5
START_TIMEOUT_S = 10.0
_TMP_PREFIX = "cascade-test-redis-"   # temp dir of a started server: --dir, its log, owner.pid
_OWNER_FILE = "owner.pid"
# Some distributions put redis-server in sbin, which is not always on a user's PATH.
_EXTRA_BIN_DIRS = ("/usr/sbin", "/usr/local/sbin")


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def redact(url: str) -> str:
    """The URL with any password replaced by ***, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def ping(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """True if the Redis at `url` answers PING within `timeout` seconds."""
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def find_redis_url() -> str | None:
    """The URL of an existing Redis to test against, or None if the session must start its own."""
    url = os.environ.get(ENV_URL, "").strip()
    if url:
        return url
    if _truthy(os.environ.get(ENV_NO_LOCAL)):
        return None
    return LOCAL_URL if ping(LOCAL_URL) else None


def _database_url(url: str, db: int) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{db}"))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True     # exists, owned by someone else
    return True


def claim_database(url: str, owner: int | None = None) -> str:
    """A database of the server at `url` for this session alone: empty (or a dead session's), marked as ours."""
    owner = os.getpid() if owner is None else owner
    for db in range(15, 0, -1):
        candidate = _database_url(url, db)
        client = redis.Redis.from_url(candidate, socket_timeout=2)
        try:
            holder = client.get(OWNER_KEY)
            if holder is not None:
                if _alive(int(holder)):
                    continue
                client.flushdb()         # a session that died (SIGKILL) left it: ours to reclaim
            elif client.dbsize():
                continue                 # somebody's data
            if client.set(OWNER_KEY, owner, nx=True):
                return candidate
        except (redis.RedisError, ValueError):
            continue                     # no such database, or not ours to judge
        finally:
            client.close()
    raise RuntimeError(f"no free database (1-15) on {redact(url)} for the tests; set {ENV_URL}")


def release_database(url: str) -> None:
    """Empty a database from claim_database (what the tests wrote and the owner key): nothing is left behind."""
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        if client.get(OWNER_KEY) == str(os.getpid()).encode():
            client.flushdb()
    finally:
        client.close()


def find_redis_server_binary() -> str | None:
    """Path of the redis-server executable, or None."""
    path = os.pathsep.join([os.environ.get("PATH", os.defpath), *_EXTRA_BIN_DIRS])
    return shutil.which("redis-server", path=path)


def _served_by(url: str, pid: int) -> bool:
    """True if the Redis answering at `url` is process `pid` (not another server on that port)."""
    client = redis.Redis.from_url(url, socket_connect_timeout=0.2, socket_timeout=0.2)
    try:
        return client.info("server").get("process_id") == pid
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent(prctl, parent_pid: int) -> None:
    """preexec_fn (Linux): SIGTERM the child when the process that started it dies, even by SIGKILL."""
    prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _preexec(die_with_parent: bool):
    if not die_with_parent or not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before fork, not in the child
    except (OSError, AttributeError):
        return None
    return functools.partial(_die_with_parent, prctl, os.getpid())


def _sweep_stale_dirs() -> None:
    """Remove temp dirs left by sessions that died without cleaning up (SIGKILL, SIGTERM)."""
    for d in Path(tempfile.gettempdir()).glob(_TMP_PREFIX + "*"):
        try:
            owner = int((d / _OWNER_FILE).read_text())
            os.kill(owner, 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except (OSError, ValueError):
            pass  # not ours to judge (unreadable, another user's, being created)


def stop_redis_server(process: subprocess.Popen, timeout: float = 5.0) -> None:
    """Stop a server from start_redis_server and remove its temp dir. Safe to call more than once."""
    if getattr(process, "cascade_owner", os.getpid()) != os.getpid():
        return  # a forked child running atexit: the server belongs to its parent
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    log = getattr(process, "cascade_log", None)
    if log is not None and not log.closed:
        log.close()
    tmpdir = getattr(process, "cascade_tmpdir", None)
    if tmpdir:
        shutil.rmtree(tmpdir, ignore_errors=True)


def start_redis_server(
    binary: str | None = None,
    timeout: float = START_TIMEOUT_S,
    die_with_parent: bool = True,
) -> tuple[str, subprocess.Popen]:
    """Start a private, non-persistent redis-server on a free 127.0.0.1 port; wait until it answers.

    Returns (url, process). Stop it with stop_redis_server(process); it is also stopped at
    interpreter exit (atexit), and on Linux it gets SIGTERM if this process dies
    (PR_SET_PDEATHSIG; note this fires when the *thread* that started it exits, so start it from
    a long-lived thread such as the main one, or pass die_with_parent=False).
    """
    binary = binary or find_redis_server_binary()
    if not binary:
        raise FileNotFoundError(
            "redis-server not found: install it (apt-get install -y redis-server, or run "
            f"`python -m tests.redis_server --ensure-binary`) or set {ENV_URL}"
        )
    _sweep_stale_dirs()
    last_error = ""
    for _attempt in range(3):  # the free port can be taken between probe and bind: retry
        port = _free_port()
        tmpdir = tempfile.mkdtemp(prefix=_TMP_PREFIX)
        Path(tmpdir, _OWNER_FILE).write_text(str(os.getpid()))
        log_path = Path(tmpdir, "redis.log")
        log = log_path.open("wb")
        args = [
            binary,
            "--bind", "127.0.0.1",
            "--port", str(port),
            "--save", "",
            "--appendonly", "no",
            "--dir", tmpdir,
            "--daemonize", "no",
        ]
        try:
            process = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=_preexec(die_with_parent),
            )
        except OSError:
            log.close()
            shutil.rmtree(tmpdir, ignore_errors=True)
            raise
        process.cascade_owner = os.getpid()  # type: ignore[attr-defined]
        process.cascade_tmpdir = tmpdir  # type: ignore[attr-defined]
        process.cascade_log = log  # type: ignore[attr-defined]
        atexit.register(stop_redis_server, process)
        url = f"redis://127.0.0.1:{port}/0"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and process.poll() is None:
            if _served_by(url, process.pid):
                return url, process
            time.sleep(0.05)
        log.flush()
        output = log_path.read_text(errors="replace")[-2000:]
        status = process.poll()
        stop_redis_server(process)
        if status is None:
            last_error = f"did not answer on port {port} within {timeout}s"
        else:
            last_error = f"exited with status {status}"
        last_error += f"; its output:\n{output}" if output.strip() else " and printed nothing"
        if not (status is not None and "already in use" in output):
            break
    raise RuntimeError(f"redis-server ({binary}) {last_error}")


def _run(cmd: list[str]) -> int:
    print("+ " + " ".join(cmd), flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    return subprocess.call(cmd, env=env)


def ensure_binary() -> int:
    """Exit status 0 if tests have a Redis to use or to start; install redis-server if needed."""
    url = find_redis_url()
    if url:
        if not ping(url):
            print(f"redis: {ENV_URL}={redact(url)} does not answer PING", file=sys.stderr)
            return 1
        print(f"redis: tests use {redact(url)}" + ("" if os.environ.get(ENV_URL) else " (a free database of it)"))
        return 0
    binary = find_redis_server_binary()
    if binary:
        print(f"redis: none at {LOCAL_URL}; tests start {binary} on a free port")
        return 0

    def fail(why: str) -> int:
        print(
            f"redis: no Redis at {LOCAL_URL} and no redis-server binary; {why}.\n"
            f"  Fix: install redis-server (Debian: apt-get install -y redis-server), or start a Redis "
            f"on 127.0.0.1:6379, or set {ENV_URL}=redis://host:port/db",
            file=sys.stderr,
        )
        return 1

    if not shutil.which("apt-get"):
        return fail("apt-get is not available to install it")
    if os.geteuid() != 0:
        return fail("installing it with apt-get needs root")
    print("redis: no Redis found and no redis-server binary; installing Debian's redis-server")
    if _run(["apt-get", "update"]) != 0:
        return fail("`apt-get update` failed")
    if _run(["apt-get", "install", "-y", "redis-server"]) != 0:
        return fail("`apt-get install -y redis-server` failed")
    binary = find_redis_server_binary()
    if not binary:
        return fail("apt-get finished but redis-server is still not on PATH")
    print(f"redis: installed {binary}; tests start it on a free port")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.redis_server", description=__doc__.split("\n")[0])
    parser.add_argument("--ensure-binary", action="store_true",
                        help="install redis-server with apt-get if no Redis URL is found and it is missing")
    args = parser.parse_args(argv)
    if args.ensure_binary:
        return ensure_binary()
    url = find_redis_url()
    print(redact(url) if url else f"(none: tests will start {find_redis_server_binary() or 'redis-server'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())


class PrivateRedis:
    """A private redis-server for fault tests: AOF fsynced every second (as in production), a fixed port,
    and a data folder that survives restarts, so it can be shut down, killed and started again."""

    def __init__(self, root: Path, appendonly: bool = True):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.appendonly = appendonly
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None
        self._log = None

    def start(self, timeout: float = START_TIMEOUT_S) -> PrivateRedis:
        """Start (or start again) on the same port and folder; wait until it answers and has loaded its data."""
        binary = find_redis_server_binary()
        if not binary:
            raise FileNotFoundError("redis-server not found (run `python -m tests.redis_server --ensure-binary`)")
        args = [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.root), "--save", "",
                "--daemonize", "no", "--appendonly", "yes" if self.appendonly else "no",
                "--appendfsync", "everysec", "--aof-timestamp-enabled", "yes", "--maxmemory-policy", "noeviction"]
        self._log = (self.root / "redis.log").open("ab")
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                        preexec_fn=_preexec(True))
        atexit.register(self.stop)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited: {(self.root / 'redis.log').read_text()[-2000:]}")
            try:
                client = redis.Redis.from_url(self.url, socket_timeout=0.5, socket_connect_timeout=0.5)
                if client.info("persistence").get("loading") == 0:
                    client.close()
                    return self
                client.close()
            except (redis.RedisError, OSError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"redis-server on port {self.port} did not answer within {timeout}s")

    def shutdown(self) -> None:
        """A clean stop: Redis fsyncs its AOF and exits."""
        try:
            redis.Redis.from_url(self.url, socket_timeout=5).shutdown(nosave=True)
        except (redis.ConnectionError, redis.ResponseError):
            pass
        self._wait()

    def kill(self) -> None:
        """SIGKILL: whatever the AOF had not fsynced (up to a second) is gone."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
        self._wait()

    def cut_last_second(self, seconds: float = 1.0) -> str:
        """After a kill: truncate the AOF to `seconds` before its last timestamp (a host crash that lost the
        page cache); returns what redis-check-aof said."""
        manifest = next(self.root.glob("appendonlydir/*.manifest"))
        incr = sorted(self.root.glob("appendonlydir/*.incr.aof"))[-1]
        stamps = [int(line[4:]) for line in incr.read_bytes().splitlines() if line.startswith(b"#TS:")]
        if not stamps:
            return "no timestamps in the AOF"
        cut = stamps[-1] - max(1, round(seconds))
        checker = shutil.which("redis-check-aof") or str(Path(find_redis_server_binary()).with_name("redis-check-aof"))
        result = subprocess.run([checker, "--truncate-to-timestamp", str(cut), str(manifest)], input="y\n",
                                capture_output=True, text=True, timeout=60)
        return (result.stdout + result.stderr).strip()

    def forget_data(self) -> None:
        """While stopped: remove everything it kept on disk, so the next start is a Redis that lost its data."""
        shutil.rmtree(self.root / "appendonlydir", ignore_errors=True)
        (self.root / "dump.rdb").unlink(missing_ok=True)

    def _wait(self) -> None:
        if self.process is not None:
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log is not None and not self._log.closed:
            self._log.close()

    def stop(self) -> None:
        """Stop for good (kill); safe to call twice."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
        self._wait()
