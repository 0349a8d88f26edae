"""Warm start: jobs forked by a server that imported torch once behave exactly like cold ones."""

import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from propetl import warm_start

REPO = Path(__file__).resolve().parent.parent


def _wait(condition, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.05)


def _start(path: Path) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", "import sys; from propetl.warm_start import serve; serve(sys.argv[1], 60)", str(path)],
                               env=_env(path))
    _wait(path.exists)
    return process


def _signature_of(env: dict[str, str]) -> str:
    return subprocess.run([sys.executable, "-c", "from propetl import warm_start; print(warm_start.signature())"],
                          env=env, capture_output=True, text=True, check=True).stdout.strip()


def _env(path: Path, warm: bool = True) -> dict[str, str]:
    """The environment a job of a local study gets, with this module's own socket: without what
    importing torch adds to it (as in a job started by Snakemake, which never imports torch)."""
    fresh = {key: value for key, value in os.environ.items() if not key.startswith(("TORCHINDUCTOR_", "KMP_"))}
    return {**fresh, warm_start.SOCKET_ENV: str(path), warm_start.ENV: "1" if warm else "0",
            "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    path = tmp_path_factory.mktemp("warm") / "warm.sock"
    process = _start(path)
    yield process, path
    process.terminate()
    process.wait(timeout=30)
    assert not path.exists()  # a stopped server takes its socket file along


def propetl(server, *args, cwd, warm=True):
    return subprocess.Popen([sys.executable, "-c", "from propetl.warm_start import main; main()", *args], cwd=cwd, env=_env(server[1], warm),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _train_args(sentiment_csv, out):
    return ("train", "--model", "tiny-bert", "--task", str(sentiment_csv), "--method", "propetl-adapter", "--max-steps", "16",
            "--eval-every", "8", "--batch-size", "16", "--lr", "5e-3", "--threads", "1", "--out", str(out))


def test_a_warm_job_gives_the_numbers_and_files_of_a_cold_one(server, sentiment_csv, tmp_path):
    warm = propetl(server, *_train_args(sentiment_csv, "warm"), cwd=tmp_path)  # relative --out: the child works in the client's directory
    out, err = warm.communicate(timeout=300)
    assert warm.returncode == 0, err
    assert out.splitlines()[-1].startswith("val {") and "Batch size" in err  # the job's output reaches the client's streams
    cold = propetl(server, *_train_args(sentiment_csv, "cold"), cwd=tmp_path, warm=False)
    assert cold.wait(timeout=300) == 0
    warm_metrics, cold_metrics = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("warm", "cold"))
    assert warm_metrics["timing"]["warm_start"] is True and cold_metrics["timing"]["warm_start"] is False
    for key in ("val", "test", "storage", "artifact_bytes", "steps", "best_step"):
        assert warm_metrics[key] == cold_metrics[key], key
    assert sorted(p.name for p in (tmp_path / "warm").iterdir()) == sorted(p.name for p in (tmp_path / "cold").iterdir())


def test_a_warm_job_reports_its_errors_and_exit_code_as_a_cold_one_would(server, tmp_path):
    job = propetl(server, "train", "--model", "tiny-bert", "--task", "no-such-task", "--method", "adapter", "--out", "x", cwd=tmp_path)
    _, err = job.communicate(timeout=60)
    assert job.returncode == 1 and err.startswith("propetl train: error: unknown task 'no-such-task'")


def test_killing_a_warm_job_kills_the_run_it_started(server, sentiment_csv, tmp_path):
    job = propetl(server, *_train_args(sentiment_csv, "run"), "--max-steps", "100000", cwd=tmp_path)
    _wait(lambda: (tmp_path / "run" / "train.log").exists())
    children = psutil.Process(server[0].pid).children()
    assert len(children) == 1 and children[0].cwd() == str(tmp_path)
    job.send_signal(signal.SIGKILL)  # what a killed Snakemake does to its jobs' process groups
    children[0].wait(timeout=30)
    assert job.wait() == -signal.SIGKILL
    _wait(lambda: not psutil.Process(server[0].pid).children())  # reaped


def test_a_terminated_warm_job_passes_the_signal_on_and_exits_as_killed_by_it(server, sentiment_csv, tmp_path):
    job = propetl(server, *_train_args(sentiment_csv, "run"), "--max-steps", "100000", cwd=tmp_path)
    _wait(lambda: (tmp_path / "run" / "train.log").exists())
    job.send_signal(signal.SIGTERM)
    assert job.wait(timeout=30) == 128 + signal.SIGTERM


@pytest.mark.parametrize("change", ["code edited", "threads asked through the environment"])
def test_a_server_started_for_other_code_or_environment_sends_jobs_back_cold_and_goes_away(change, tmp_path, monkeypatch):
    server, env = _start(tmp_path / "old.sock"), _env(tmp_path / "old.sock")
    for key in set(os.environ) - set(env):  # otherwise this process's environment is the server's
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert warm_start.signature() == _signature_of(env)  # the server serves this process as it is
    if change == "code edited":
        monkeypatch.setattr(warm_start, "signature", lambda: "code edited since the server started")
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", "7")  # read when torch is imported
    assert warm_start.run(["train", "--help"]) is None  # the caller runs the job itself
    assert server.wait(timeout=30) == 0 and not (tmp_path / "old.sock").exists()


def test_a_job_queued_on_a_server_that_stops_listening_before_taking_it_runs_cold(tmp_path, monkeypatch):
    """Two jobs start together at a server whose code went stale: it answers the first and closes its
    socket, which resets the second's queued connection. That job must run cold, not fail."""
    path = tmp_path / "going.sock"
    monkeypatch.setenv(warm_start.SOCKET_ENV, str(path))
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    outcome = {}
    job = threading.Thread(target=lambda: outcome.setdefault("code", warm_start.run(["train", "--help"])))
    job.start()
    assert select.select([listener], [], [], 30)[0]  # the job's connection waits in the queue, never accepted
    listener.close()
    job.join(timeout=30)
    assert not job.is_alive() and outcome == {"code": None}  # None: the caller runs the job itself


def test_without_a_server_the_first_job_runs_cold_and_starts_one_in_the_background(tmp_path, monkeypatch):
    path = tmp_path / "new.sock"
    monkeypatch.setenv(warm_start.SOCKET_ENV, str(path))
    monkeypatch.setenv("PYTHONPATH", _env(path)["PYTHONPATH"])
    assert warm_start.run(["train", "--help"]) is None
    _wait(path.exists)  # listening once its imports are done
    assert warm_start.run(["train", "--help"]) == 0  # served by it
    started, = (p for p in psutil.process_iter(["cmdline"]) if str(path) in (p.info["cmdline"] or []))
    started.terminate()
    started.wait(timeout=30)
    assert not path.exists()


def test_the_launcher_sits_above_the_command_line_and_the_library_never_imports_it():
    # cli -> training -> ... must not reach back to the launcher (an import circle before)
    code = "import sys, propetl.cli, propetl.training, propetl.tuning; print('propetl.warm_start' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], env=_env(Path("unused.sock")), capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_the_propetl_command_enters_through_the_launcher():
    import tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"propetl": "propetl.warm_start:main"}
