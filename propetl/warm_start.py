"""The ``propetl`` command's launcher, and its warm start: a local server that has imported torch and
transformers once and forks a child per job.

The launcher sits above the command line (:mod:`propetl.cli`): it decides where a command runs
(in a warm child, or here) and hands it to :func:`propetl.cli.main`, which knows nothing of
servers. A forked child tells :mod:`propetl.timing` so (its run records ``warm_start``).

Every ``propetl train`` of a study is its own process (a separate, resumable Snakemake job),
and each one spends 4-6 s importing torch, transformers and datasets before its first step:
more than a tenth of a short job. With ``PROPETL_WARM_START=1`` (the workflow sets it for
local execution) the command line connects to a server on this host that did those imports
once, sends its arguments, working directory, environment and standard streams, and waits
for the exit code of the forked child that runs the job. The job stays what it was: one
command, one run directory, same outputs (a test compares them with a cold run), killed with
its job (the child dies when its client goes). Without a server the first job starts one in
the background and runs cold itself; the server exits after ``IDLE_EXIT_S`` without jobs or
when the code it imported changed.

What the server costs runs outside every job: its own imports once (a few seconds) and its
memory (~0.5 GB, shared copy-on-write with the children).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
from contextlib import suppress
from pathlib import Path

from . import cli, timing

ENV = "PROPETL_WARM_START"
SOCKET_ENV = "PROPETL_WARM_SOCKET"
COMMANDS = ("train", "tune", "prepare")  # the job commands worth a warm start
IDLE_EXIT_S = 120.0
STALE = -1000  # reply instead of an exit code: the server's code differs from the client's
_CODE = struct.Struct("!i")
_IMPORT_TIME_ENV = ("HF_", "HUGGINGFACE", "TRANSFORMERS_", "TORCH", "PYTORCH_", "CUDA", "OMP_", "MKL_", "OPENBLAS_",
                    "TOKENIZERS_", "PYTHON")


def main(argv: list[str] | None = None) -> None:
    """``propetl ARGV``: a job command in a child of the warm server when warm start is on and a server
    is up, everything else here (a job that finds no server starts one for the next and runs cold)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMANDS and enabled():  # off in a job the server forked (_child)
        code = run(argv)  # None: no warm server (yet), run here
        if code is not None:
            sys.exit(code)
    cli.main(argv)


def enabled() -> bool:
    return os.environ.get(ENV, "").lower() in ("1", "true", "on")


def signature() -> str:
    """What the server's imports depend on: this interpreter, every module file of the package (path,
    size, mtime) and the environment variables libraries read when imported (threads, caches, devices)."""
    package = Path(__file__).parent
    stamp = [sys.executable] + [f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in sorted(package.rglob("*.py"))]
    stamp += sorted(f"{key}={value}" for key, value in os.environ.items() if key.startswith(_IMPORT_TIME_ENV))
    return hashlib.sha1("\n".join(stamp).encode()).hexdigest()[:16]


def socket_path() -> Path:
    """One server per user, interpreter and package directory on this host (``PROPETL_WARM_SOCKET`` overrides)."""
    if os.environ.get(SOCKET_ENV):
        return Path(os.environ[SOCKET_ENV])
    key = hashlib.sha1(f"{sys.executable}\n{Path(__file__).parent}".encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"propetl-warm-{os.getuid()}-{key}.sock"


def run(argv: list[str]) -> int | None:
    """Run ``propetl ARGV`` in a child of the warm server; None when there is none (run cold then).

    Starting a server when there is none is left to the background, so no job ever waits for one.
    """
    path = socket_path()
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        client.connect(str(path))
    except OSError:
        client.close()
        _spawn_server(path)
        return None
    forwarded = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    signal.pthread_sigmask(signal.SIG_BLOCK, forwarded)  # held until they can reach the child
    with client:
        request = json.dumps({"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ), "signature": signature()}).encode()
        try:
            socket.send_fds(client, [_CODE.pack(len(request)) + request], [0, 1, 2])
            child = _receive_code(client)
        except OSError:  # queued on a server that stopped listening (its code went stale) before taking this job
            child = None
        if child is None or child == STALE:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, forwarded)
            return None  # the server is going away (exited, or its code is older than ours): run cold
        for signum in forwarded:  # a job's kill reaches its child
            signal.signal(signum, lambda signum, frame: os.kill(child, signum))
        signal.pthread_sigmask(signal.SIG_UNBLOCK, forwarded)
        code = _receive_code(client)
    if code is None:
        sys.stderr.write("propetl: the warm-start server died during the job\n")
        return 1
    return code if code >= 0 else 128 - code  # killed by signal N: exit 128+N, as a shell reports it


def _receive_code(conn: socket.socket) -> int | None:
    data = _receive(conn, b"", _CODE.size)
    return None if data is None else _CODE.unpack(data)[0]


def _receive(conn: socket.socket, data: bytes, size: int) -> bytes | None:
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _spawn_server(path: Path) -> None:
    """Start a server in its own session, unless one holds the lock (starting or running)."""
    lock = _try_lock(path)
    if lock is None:
        return
    os.close(lock)  # the server takes the lock itself; a second server started meanwhile exits at once
    subprocess.Popen([sys.executable, "-c", "import sys; from propetl.warm_start import serve; serve(sys.argv[1])", str(path)],
                     start_new_session=True, cwd="/", stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, close_fds=True)


def _try_lock(path: Path) -> int | None:
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def serve(path: str | Path, idle_exit_s: float = IDLE_EXIT_S) -> None:
    """Import what jobs need, then fork a child per connection until idle for ``idle_exit_s``.

    Once a client runs newer code the server stops listening and exits when its running
    children are done (their clients wait for their exit codes)."""
    path = Path(path)
    lock = _try_lock(path)
    if lock is None:
        return  # another server is starting or running
    code = signature()  # before the imports: torch sets environment variables of its own
    import propetl.training  # noqa: F401  the imports every job would repeat
    import propetl.tuning  # noqa: F401

    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))  # stopped: take the socket file along
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    binding = path.with_name(f"{path.name}.{os.getpid()}")
    binding.unlink(missing_ok=True)
    listener.bind(str(binding))
    listener.listen(16)
    os.replace(binding, path)  # the socket file appears only once it accepts connections
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    listening = True
    try:
        while selector.get_map():
            events = selector.select(timeout=idle_exit_s)
            if not events and listening and len(selector.get_map()) == 1:
                return  # idle: no job came and none is running
            for key, _ in events:
                if key.fileobj is listener:
                    if not _accept(listener, selector, code, lock):  # the package changed: stop taking jobs
                        selector.unregister(listener)
                        listener.close()
                        path.unlink(missing_ok=True)
                        listening = False
                else:  # a child's pidfd: it has exited, tell its client
                    pid, conn = key.data
                    selector.unregister(key.fileobj)
                    os.close(key.fd)
                    _, status = os.waitpid(pid, 0)
                    with conn, suppress(OSError):  # its client may be gone: killed with the job
                        conn.sendall(_CODE.pack(os.waitstatus_to_exitcode(status)))
    finally:
        if listening:
            listener.close()
            path.unlink(missing_ok=True)


def _accept(listener: socket.socket, selector: selectors.BaseSelector, code: str, lock: int) -> bool:
    conn, _ = listener.accept()
    fds: list[int] = []
    try:
        message, fds, _, _ = socket.recv_fds(conn, 1 << 16, 3)
        request = json.loads(_receive(conn, message[_CODE.size:], _CODE.unpack(message[:_CODE.size])[0]) or b"")
    except (OSError, ValueError, struct.error):  # a client that died while connecting
        for fd in fds:
            os.close(fd)
        conn.close()
        return True
    if request.get("signature") != code:
        with conn:
            conn.sendall(_CODE.pack(STALE))
        for fd in fds:
            os.close(fd)
        return False
    pid = os.fork()
    if pid == 0:  # the child keeps only its own connection and streams
        os.close(lock)
        for key in list(selector.get_map().values()):
            if key.data:
                key.data[1].close()
                os.close(key.fd)
        selector.close()
        listener.close()
        _child(conn, fds, request)  # never returns
    for fd in fds:
        os.close(fd)
    with suppress(OSError):
        conn.sendall(_CODE.pack(pid))
    selector.register(os.pidfd_open(pid), selectors.EVENT_READ, (pid, conn))
    return True


def _child(conn: socket.socket, fds: list[int], request: dict) -> None:
    timing.record_fork()
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    os.environ.pop(ENV, None)  # a propetl command this job starts runs in-process, not through the server
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)

    def die_with_client() -> None:  # the client went away (its job was killed): so does the job
        while conn.recv(1):
            pass
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=die_with_client, daemon=True).start()
    code = 1
    try:
        sys.argv = ["propetl", *request["argv"]]
        cli.main(request["argv"])
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        if not isinstance(stop.code, int | None):
            print(stop.code, file=sys.stderr)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

