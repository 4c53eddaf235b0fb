"""`python -m training run --local-ranks N | --hostfile FILE` (or TRAIN_DISTRIBUTED): one run on N ranks.

This process runs mlx.launch (the `mlx.launch` command's own entry point, in-process) with
`python -m training run ... --events` as every rank's command, and stays the parent of the run:

- its stdin, which mlx.launch copies to every rank, carries stop requests: SIGTERM or SIGINT here
  sends `stop SIGTERM`, and the ranks finish the step, checkpoint and end "cancelled" (a second
  signal sends `kill`). If this process dies, even by SIGKILL, local ranks' stdin closes and rank 0
  stops them the same way (see distributed.py); ranks over ssh sit behind a pty that never closes
  their stdin, and the ssh sessions outlive this process: they train on to the end;
- rank 0's events arrive on its stdout: passed on with --events (so the pipeline follows a
  distributed run like any other), and they give the exit code: 0 after rank 0's "done", the code
  of its "error" otherwise (mlx.launch itself exits 0 whatever the ranks did);
- mlx.launch's output threads would poll in a busy loop (see `_patient_select`), which on a 2-core
  machine costs the ranks a third of a core; they get a select() that sleeps until there is output.
"""

from __future__ import annotations

import json
import logging
import os
import random
import select
import signal
import socket
import subprocess
import sys
import threading
from importlib.metadata import entry_points
from pathlib import Path

from common.settings import SettingsError

from ..errors import EXIT_FAILED
from .reporting import Reporter

log = logging.getLogger(__name__)

LOCAL_HOST = "127.0.0.1"  # a hostfile host mlx.launch starts without ssh
SSH_TIMEOUT_S = 15


class HostUnreachable(RuntimeError):
    """A hostfile's host does not answer over ssh: the run fails (exit 1), since a host asleep or
    off the network is no bad input and may answer next time."""


def relaunch(spec: str, rank_argv: list[str], *, events: bool) -> int:
    """Run `python -m training <rank_argv>` on the ranks TRAIN_DISTRIBUTED names; returns the exit code."""
    launch = _mlx_launch()
    if launch.__globals__.get("select") is select.select:  # the module that runs the ranks' I/O
        launch.__globals__["select"] = _patient_select
    command = [sys.executable, "-m", "training", *rank_argv]
    argv = [*launch_arguments(spec), "--", *command]
    log.info("mlx.launch %s", " ".join(argv))

    sys.stdout.flush()
    control_in, control = os.pipe()
    ranks_out, out = os.pipe()
    saved_in, saved_out = os.dup(0), os.dup(1)
    os.dup2(control_in, 0)  # mlx.launch copies what arrives here to every rank's stdin
    os.dup2(out, 1)  # and the ranks' stdout to here
    os.close(control_in)
    os.close(out)
    relay = _Relay(os.fdopen(saved_out, "w", buffering=1), events, control)
    reader = threading.Thread(target=relay.run, args=(ranks_out,), name="rank-events", daemon=True)
    reader.start()
    handlers = {number: signal.signal(number, relay.on_signal) for number in (signal.SIGINT, signal.SIGTERM)}
    saved_argv, code = sys.argv, None
    sys.argv = ["mlx.launch", *argv]
    try:
        launch()
    except SystemExit as exit:  # mlx.launch's own usage errors (a malformed hostfile, ...)
        code = exit.code if isinstance(exit.code, int) else 2
    finally:
        sys.argv = saved_argv
        for number, handler in handlers.items():
            signal.signal(number, handler)
        sys.stdout.flush()
        os.dup2(relay.stream.fileno(), 1)  # closes our end of the ranks' stdout: the reader ends
        os.dup2(saved_in, 0)
        os.close(saved_in)
        os.close(control)
        reader.join()
    return code if code else relay.exit_code()


def launch_arguments(spec: str) -> list[str]:
    """mlx.launch arguments: N local ranks (ring on 127.0.0.1, free ports; the ranks inherit this
    environment) or a hostfile, once each of its hosts answers over ssh."""
    if spec.isdigit():
        ranks = int(spec)
        # N ranks share this machine's cores: N × all-cores BLAS threads would spin against each other
        os.environ.setdefault("OPENBLAS_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // ranks)))
        return [
            "--hosts",
            "127.0.0.1",
            "-n",
            str(ranks),
            "--backend",
            "ring",
            "--starting-port",
            str(free_ports(ranks)),
        ]
    path = Path(spec).expanduser()
    if not path.is_file():
        raise SettingsError(
            f"TRAIN_DISTRIBUTED: no hostfile {path} (a number of local processes, or the "
            "path of an mlx.launch JSON hostfile)"
        )
    check_ssh(hostfile_hosts(path), path)
    return ["--hostfile", str(path.resolve()), *forwarded_env()]


def hostfile_hosts(path: Path) -> list[str]:
    """The ssh names of an mlx.launch hostfile's hosts."""
    try:
        data = json.loads(path.read_text())
        names = [host["ssh"] for host in (data["hosts"] if isinstance(data, dict) else data)]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise SettingsError(
            f"TRAIN_DISTRIBUTED: {path} is not an mlx.launch hostfile ({type(error).__name__}: {error}); "
            'it holds {"hosts": [{"ssh": NAME, "ips": [ADDRESS]}, ...]}'
        ) from None
    if not names or not all(isinstance(name, str) and name for name in names):
        raise SettingsError(f"TRAIN_DISTRIBUTED: {path} names no host to ssh to")
    return names


def check_ssh(names: list[str], path: Path) -> None:
    """Every host mlx.launch will reach over ssh answers without a password, before any rank starts
    (after, a host that does not shows only as a rank that exited with code 255)."""
    remote = [name for name in dict.fromkeys(names) if name != LOCAL_HOST]
    try:
        checks = {
            name: subprocess.Popen(
                ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={SSH_TIMEOUT_S}", name, "true"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            for name in remote
        }
    except FileNotFoundError:
        raise SettingsError(
            "TRAIN_DISTRIBUTED: a hostfile needs the ssh client (ssh), which is not installed"
        ) from None
    failed = {}
    for name, check in checks.items():
        try:
            _, stderr = check.communicate(timeout=2 * SSH_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            check.kill()
            check.communicate()
            failed[name] = f"no answer within {2 * SSH_TIMEOUT_S} s"
            continue
        if check.returncode:
            lines = stderr.strip().splitlines()
            failed[name] = lines[-1] if lines else f"ssh exit code {check.returncode}"
    if failed:
        name, reason = next(iter(failed.items()))
        raise HostUnreachable(
            f"cannot reach {name} over ssh ({reason}); every host in {path} needs ssh without a password "
            f"from this one: try `ssh -o BatchMode=yes {name} true`"
        )


def forwarded_env() -> list[str]:
    """The project's settings from this environment, for ranks started over ssh (local ones inherit it)."""
    from data.settings import DataSettings
    from inference.backend import BackendSettings
    from inference.settings import InferenceSettings

    from ..settings import TrainingSettings

    names = {f"TRAIN_{name}".upper() for name in TrainingSettings.model_fields} - {"TRAIN_DISTRIBUTED"}
    names |= {name.upper() for cls in (InferenceSettings, DataSettings, BackendSettings) for name in cls.model_fields}
    return [f"--env={name}={value}" for name, value in sorted(os.environ.items()) if name in names]


def free_ports(count: int) -> int:
    """A base port with `count` free consecutive ports on 127.0.0.1 (mlx.launch uses base, base + 1, ...)."""
    chooser = random.Random()
    for _ in range(200):
        base = chooser.randrange(20000, 60000 - count)
        if all(_free(base + offset) for offset in range(count)):
            return base
    raise RuntimeError("no free local ports for the ring backend")


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _mlx_launch():
    found = list(entry_points(group="console_scripts", name="mlx.launch"))
    if not found:
        raise SettingsError("TRAIN_DISTRIBUTED: mlx.launch is not installed (it comes with mlx)")
    return found[0].load()


def _patient_select(readers, writers, errors, timeout=None):
    """select() for mlx.launch's output threads, which ask for output *or* room in the rank's stdin:
    the stdin pipe always has room, so they would spin, taking a core from the ranks. This waits for
    output (or the timeout, ≤ 1 s) first; a stop request reaches the ranks at most that much later."""
    ready, _, failed = select.select(readers, [], errors, timeout)
    _, writable, _ = select.select([], writers, [], 0)
    return ready, writable, failed


class _Relay:
    """Rank 0's stdout → our stdout (as events) and the exit code; signals → stop requests."""

    def __init__(self, stream, events: bool, control: int):
        self.stream, self.control, self.last, self.signals = stream, control, {}, 0
        self.reporter = Reporter(events, stream)
        self.reporter.bar = False  # the ranks' log lines come through unannounced
        self.reporter.stop = self  # a vanished events reader: `signal` is set, the ranks stop
        self._reason = None

    @property
    def signal(self) -> str | None:
        return self._reason

    @signal.setter
    def signal(self, reason: str) -> None:
        self._reason = reason
        self._send(f"stop {reason}")

    def on_signal(self, number, _frame) -> None:
        self.signals += 1
        if self.signals == 1:
            self.signal = signal.Signals(number).name
            log.warning("%s: the ranks finish their step and save a checkpoint (again to abort now)", self._reason)
        else:
            self._send("kill")

    def _send(self, line: str) -> None:
        try:
            os.write(self.control, f"{line}\n".encode())
        except OSError:  # the launcher is gone already
            pass

    def run(self, fd: int) -> None:
        with os.fdopen(fd, "rb") as source:
            for raw in source:
                try:
                    event = json.loads(raw)
                except ValueError:
                    event = None
                if not isinstance(event, dict) or not isinstance(event.get("event"), str):
                    # keep stdout for events; a rank over ssh writes to a pty, which ends lines with \r\n
                    sys.stderr.write(raw.decode(errors="replace").replace("\r\n", "\n"))
                    continue
                self.last[event["event"]] = event
                self.reporter.emit(event.pop("event"), **event)

    def exit_code(self) -> int:
        if "done" in self.last:
            return 0
        if "error" in self.last:
            return int(self.last["error"].get("exit_code") or EXIT_FAILED)
        message = "the distributed run ended without a result from rank 0 (see the ranks' messages above)"
        self.reporter.emit("error", message=message, exit_code=EXIT_FAILED)
        print(f"training: error: {message}", file=sys.stderr)
        return EXIT_FAILED
