"""Data-parallel training through mlx.launch: two local ranks on the ring backend (127.0.0.1), and
two "hosts" reached over ssh from a hostfile.

Two ranks, each holding its rows of every global micro-batch, must compute what one process
computes with the same global batch: the same per-step losses, validation losses and adapter,
up to float summation order. Stopping the launcher (SIGTERM, then SIGKILL) leaves checkpoints
that distributed --resume runs continue to that same result. And the pipeline trains on two
ranks when PIPELINE_TRAIN_ARGS says so.

The hosts are two network namespaces joined by a veth pair, each with its own address and its own
sshd (keys made by the test): `--hostfile` runs as it would on two machines, ssh to each host and
the ring over their addresses, except that they share this machine's files.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from training.runs import pid_alive

from .helpers import adapter, clean_env, cli, command, events, metrics, write_dataset

ITERS = 12
# Batches of 3 rows split 2 + 1 over the ranks (the last, of 2 rows, 1 + 1): uneven shares, so the
# losses only match if each rank's share is weighted by its assistant tokens. Two micro-batches per
# step exercise the accumulation.
CONFIG = (
    "--iters",
    ITERS,
    "--batch-size",
    3,
    "--grad-accumulation",
    2,
    "--eval-every",
    4,
    "--learning-rate",
    "1e-3",
    "--warmup-steps",
    2,
    "--events",
)
TOLERANCE = 1e-5  # float32 sums in another order; measured differences are ~2e-6


def _summary(run_dir) -> dict:
    return {
        "losses": [m["loss"] for m in metrics(run_dir, "train")],
        "steps": [m["step"] for m in metrics(run_dir, "train")],
        "evals": [(m["step"], m["val_loss"]) for m in metrics(run_dir, "eval")],
        "final": {k: np.array(v) for k, v in adapter(run_dir / "adapters" / "final").items()},
    }


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_dir, models_root):
    """One process, the same global batch, never interrupted."""
    root = tmp_path_factory.mktemp("single")
    data = write_dataset(root / "dataset")
    result = cli("run", "--dataset", data, *CONFIG, env=clean_env(root / "home", models_root, tiny_model_dir), cwd=root)
    assert result.returncode == 0, result.stderr
    done = events(result.stdout)[-1]
    assert done["event"] == "done" and done["status"] == "finished"
    run_dir = root / "home" / "runs" / done["run_id"]
    return {"dataset": data, "run_dir": run_dir, **_summary(run_dir)}


def _differences(run_dir, reference) -> dict:
    """How far a run is from the reference; asserts it is within TOLERANCE."""
    run = _summary(run_dir)
    assert run["steps"] == list(range(1, ITERS + 1))  # redone steps not doubled
    assert [s for s, _ in run["evals"]] == [s for s, _ in reference["evals"]]
    assert set(run["final"]) == set(reference["final"])
    numbers = {
        "train_loss": float(np.max(np.abs(np.subtract(run["losses"], reference["losses"])))),
        "val_loss": float(
            np.max(np.abs(np.subtract([v for _, v in run["evals"]], [v for _, v in reference["evals"]])))
        ),
        "adapter": max(float(np.max(np.abs(run["final"][k] - reference["final"][k]))) for k in run["final"]),
    }
    assert all(value <= TOLERANCE for value in numbers.values()), numbers
    return numbers


def _start(*args) -> subprocess.Popen:
    return subprocess.Popen(
        command("run", *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ)
    )


def test_two_ranks_on_the_ring_equal_one_process_with_the_same_global_batch(reference, tiny_env, isolated_env):
    result = cli("run", "--dataset", reference["dataset"], "--local-ranks", 2, *CONFIG)

    assert result.returncode == 0, result.stderr
    seen = events(result.stdout)
    start, done = seen[0], seen[-1]
    assert start["event"] == "start" and start["distributed"] == {"world_size": 2, "backend": "ring"}
    assert done["event"] == "done" and done["status"] == "finished" and done["step"] == ITERS
    # only rank 0 reports: every step once, in order
    assert [e["step"] for e in seen if e["event"] == "step"] == list(range(1, ITERS + 1))
    rank_1_lines = [line for line in result.stderr.splitlines() if "[rank 1]" in line]
    assert all(" INFO " not in line for line in rank_1_lines)  # rank 1 logs warnings only
    run_dir = isolated_env / "runs" / done["run_id"]
    assert json.loads((run_dir / "config.json").read_text())["distributed"]["world_size"] == 2
    assert [p.name for p in (isolated_env / "runs").iterdir() if not p.name.startswith(".")] == [done["run_id"]]

    numbers = _differences(run_dir, reference)

    print(f"\n2 ranks vs 1 process, max |difference|: {numbers}")
    for one, two, step in zip(reference["losses"], _summary(run_dir)["losses"], range(1, ITERS + 1)):
        print(f"  step {step}: loss 1 process {one:.7f}  2 ranks {two:.7f}")


def test_a_warm_start_reaches_every_rank(reference, tiny_env, isolated_env, tmp_path):
    import shutil

    start = shutil.copytree(reference["run_dir"] / "adapters" / "final", tmp_path / "start")
    # learning rate 0: the ranks end where they started, which must be the start adapter on both
    result = cli(
        "run", "--dataset", reference["dataset"], "--local-ranks", 2, *CONFIG, "--iters", 2, "--learning-rate", 0,
        "--init-adapter", start,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    done = events(result.stdout)[-1]
    assert done["event"] == "done" and done["status"] == "finished"
    final = adapter(isolated_env / "runs" / done["run_id"] / "adapters" / "final")
    for name, value in reference["final"].items():
        assert np.array_equal(np.array(final[name]), value), name


def test_sigterm_then_sigkill_of_the_launcher_each_leave_a_checkpoint_and_distributed_resumes_end_equal(
    reference, tiny_env, isolated_env
):
    # SIGTERM: forwarded to the ranks, which finish the step, checkpoint and end "cancelled" (exit 0)
    child = _start("--dataset", reference["dataset"], "--local-ranks", 2, "--checkpoint-every", 1000, *CONFIG)
    seen = []
    for line in child.stdout:
        seen.append(json.loads(line))
        if seen[-1]["event"] == "step" and seen[-1]["step"] == 2:
            child.send_signal(signal.SIGTERM)
    _, stderr = child.communicate(timeout=120)

    assert child.returncode == 0, stderr
    done = seen[-1]
    # The launcher forwards SIGTERM to every rank; whichever rank sees it first stops them all.
    assert done["event"] == "done" and done["status"] == "cancelled"
    assert "SIGTERM" in done["reason"] or "another rank's stop request" in done["reason"], done["reason"]
    stopped = done["step"]
    assert 2 <= stopped < ITERS and [e for e in seen if e["event"] == "checkpoint"][-1]["step"] == stopped
    run_dir = isolated_env / "runs" / done["run_id"]
    assert json.loads((run_dir / "status.json").read_text())["state"] == "cancelled"
    assert (run_dir / "checkpoints" / f"step-{stopped:07d}" / "index.json").is_file()
    assert not (run_dir / "adapters" / "final").exists()

    # SIGKILL of the resumed run's launcher: rank 0 sees its stdin close and stops every rank at the
    # end of the step, with a checkpoint (the deadline only keeps a broken build from hanging)
    child = _start("--resume", done["run_id"], "--local-ranks", 2, "--events")
    for line in child.stdout:
        event = json.loads(line)
        if event["event"] == "start":
            assert event["resumed"] is True and event["step"] == stopped and event["distributed"]["world_size"] == 2
        if event["event"] == "step":
            child.send_signal(signal.SIGKILL)
            break
    child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = json.loads((run_dir / "status.json").read_text())
        if status["state"] != "running" and not pid_alive(status["pid"]):
            break
        time.sleep(0.2)
    assert status["state"] == "cancelled" and "launcher gone" in status["reason"], status
    killed = status["step"]
    assert stopped < killed < ITERS
    assert (run_dir / "checkpoints" / f"step-{killed:07d}" / "index.json").is_file()

    resumed = cli("run", "--resume", "--local-ranks", 2, "--events")  # the newest interrupted run

    assert resumed.returncode == 0, resumed.stderr
    start, done = events(resumed.stdout)[0], events(resumed.stdout)[-1]
    assert start["run_id"] == run_dir.name and start["resumed"] is True and start["step"] == killed
    assert done["status"] == "finished" and done["step"] == ITERS
    _differences(run_dir, reference)


def test_the_pipeline_trains_on_two_ranks_when_train_distributed_is_set(
    tiny_model_dir, isolated_env, monkeypatch, tmp_path
):
    from training.lifecycle.pipeline import run_pipeline

    from .helpers import lifecycle_env, write_seed

    lifecycle_env(monkeypatch, tiny_model_dir, write_seed(tmp_path / "seed"))
    monkeypatch.setenv("TRAIN_DISTRIBUTED", "2")  # the ranks inherit it too: they must not relaunch
    progress = []

    result = run_pipeline(
        trigger="retrain",
        requested_by="admin",
        on_progress=progress.append,
        train_args=[
            "--iters",
            "6",
            "--batch-size",
            "4",
            "--learning-rate",
            "2e-3",
            "--warmup-steps",
            "2",
            "--eval-every",
            "3",
            "--val-batches",
            "4",
        ],
    )

    assert result.outcome in ("promoted", "rejected") and result.version == "v0001", result.message
    config = json.loads((result.run_dir / "config.json").read_text())
    assert config["distributed"] == {"world_size": 2, "backend": "ring"}
    assert [e["step"] for e in progress if e.get("event") == "step"] == list(range(1, 7))
    assert [e["stage"] for e in progress if e.get("event") == "stage"][:5] == [
        "dataset",
        "ground",
        "train",
        "register",
        "gate",
    ]


def test_a_failure_on_rank_0_ends_every_rank_with_rank_0s_error_and_exit_code(tiny_env, isolated_env):
    result = cli("run", "--resume", "--local-ranks", 2, "--events")  # nothing to resume: exit 2

    assert result.returncode == 2, result.stderr
    assert events(result.stdout) == [
        {
            "event": "error",
            "exit_code": 2,
            "message": f"no unfinished run with a checkpoint under {isolated_env / 'runs'}",
        }
    ]
    assert "[rank 1]" in result.stderr and "rank 0 failed" in result.stderr  # rank 1 just ended, quietly
    assert "Traceback" not in result.stderr


# --- two hosts: network namespaces on a veth pair, each with its own sshd ------------------------

HOST_ADDRESSES = ("10.254.0.1", "10.254.0.2")  # on the namespaces' veth pair only: no route leaves them
RING_PORTS = {"32323", "32324"}  # mlx.launch's ring ports for a hostfile: rank r listens on 32323 + r
SSHD_CONFIG = """ListenAddress {address}:22
HostKey {host_key}
AuthorizedKeysFile {authorized_keys}
PidFile {folder}/sshd-{index}.pid
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
SetEnv HOME={home}
"""
SSH_CONFIG = """Host *
  User root
  IdentityFile {key}
  IdentitiesOnly yes
  UserKnownHostsFile {known_hosts}
  StrictHostKeyChecking yes
  BatchMode yes
  ConnectTimeout 10
"""


def _system_tool(name: str) -> str | None:
    return shutil.which(name, path=os.pathsep.join(("/usr/sbin", "/usr/local/sbin", os.environ.get("PATH", ""))))


def _why_no_hosts() -> str | None:
    """Why two hosts cannot be made here, before trying; None when they can."""
    if not sys.platform.startswith("linux"):
        return "network namespaces are Linux's"
    if os.geteuid() != 0:
        return "needs root: it makes network namespaces and runs sshd in them"
    if _system_tool("ip") is None:
        return "no `ip` (iproute2) to make network namespaces"
    if _system_tool("sshd") is None:
        return "no sshd (Debian: apt-get install openssh-server)"
    missing = [tool for tool in ("ssh", "ssh-keygen") if shutil.which(tool) is None]
    return f"no {' or '.join(missing)} (openssh-client)" if missing else None


class TwoHosts:
    """Two namespaces, `farense-host1-PID` and `-host2-`, at HOST_ADDRESSES, each running an sshd that
    takes the test's key; `ssh_dir` holds the `ssh` mlx.launch is to find first on PATH (the test's
    key and known hosts, never the user's ~/.ssh)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.names = tuple(f"farense-host{i}-{os.getpid()}" for i in (1, 2))
        self.ssh_dir = folder / "bin"
        self.hostfile = folder / "hosts.json"
        self.sshd_logs = tuple(folder / f"sshd-{i}.log" for i in (1, 2))
        self.namespaces: list[str] = []
        self.daemons: list[subprocess.Popen] = []

    def on(self, host: int, *argv) -> list[str]:
        """A command line run on host 1 or 2."""
        return ["ip", "netns", "exec", self.names[host - 1], *map(str, argv)]

    def env(self) -> dict:
        return dict(os.environ, PATH=f"{self.ssh_dir}{os.pathsep}{os.environ['PATH']}")

    def make(self) -> None:
        for name in self.names:
            made = _ip("netns", "add", name)
            if made.returncode:
                pytest.skip(f"no network namespaces here: `ip netns add` said {made.stderr.strip()!r}")
            self.namespaces.append(name)
        pair = _ip(
            *("link", "add", "name", "eth0", "netns", self.names[0], "type", "veth"),
            *("peer", "name", "eth0", "netns", self.names[1]),
        )
        if pair.returncode:
            pytest.skip(f"no veth pairs here: `ip link add ... type veth` said {pair.stderr.strip()!r}")
        for name, address in zip(self.names, HOST_ADDRESSES):
            for args in (("addr", "add", f"{address}/24", "dev", "eth0"), ("link", "set", "lo", "up")):
                _ip("-n", name, *args, check=True)
            _ip("-n", name, "link", "set", "eth0", "up", check=True)
        self._start_sshds()

    def _start_sshds(self) -> None:
        client_key = _keygen(self.folder / "client_key")
        (self.folder / "authorized_keys").write_text(client_key.with_suffix(".pub").read_text())
        known = []
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
        for index, address in enumerate(HOST_ADDRESSES, 1):
            host_key = _keygen(self.folder / f"host_key_{index}")
            known.append(f"{address} {host_key.with_suffix('.pub').read_text()}")
            config = self.folder / f"sshd-{index}.conf"
            config.write_text(
                SSHD_CONFIG.format(
                    address=address,
                    host_key=host_key,
                    authorized_keys=self.folder / "authorized_keys",
                    folder=self.folder,
                    index=index,
                    home=self._home(index),
                )
            )
            with self.sshd_logs[index - 1].open("w") as log:
                self.daemons.append(
                    subprocess.Popen(self.on(index, _system_tool("sshd"), "-D", "-e", "-f", config), stderr=log)
                )
        (self.folder / "known_hosts").write_text("".join(known))
        (self.folder / "ssh_config").write_text(
            SSH_CONFIG.format(key=client_key, known_hosts=self.folder / "known_hosts")
        )
        self.ssh_dir.mkdir()
        wrapper = self.ssh_dir / "ssh"
        wrapper.write_text(f'#!/bin/sh\nexec {shutil.which("ssh")} -F {self.folder / "ssh_config"} "$@"\n')
        wrapper.chmod(0o755)
        deadline = time.monotonic() + 20
        for address in HOST_ADDRESSES:  # each sshd answers, with the test's keys, from host 1
            while subprocess.run(self.on(1, "ssh", address, "true"), env=self.env(), capture_output=True).returncode:
                assert time.monotonic() < deadline, "\n".join(log.read_text() for log in self.sshd_logs)
                time.sleep(0.2)

    def _home(self, index: int) -> Path:
        """Each host's own home: a rank that missed the forwarded settings writes its default
        FARENSE_HOME there, never into the user's ~/.farense."""
        home = self.folder / f"home-{index}"
        home.mkdir()
        return home

    def ranks(self, host: int) -> list[str]:
        """The ranks (MLX_RANK, which mlx.launch gives each) of the `python -m training run`
        processes on a host."""
        found = []
        for pid in _ip("netns", "pids", self.names[host - 1]).stdout.split():
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:  # ended meanwhile
                continue
            if argv[1:4] == [b"-m", b"training", b"run"]:
                found += [item.removeprefix(b"MLX_RANK=").decode() for item in environ if item.startswith(b"MLX_RANK=")]
        return found

    def connections(self, host: int) -> set[tuple[str, str]]:
        """The host's established TCP connections as (local, peer) address:port pairs."""
        listed = subprocess.run(self.on(host, "ss", "-Htn", "state", "established"), capture_output=True, text=True)
        return {tuple(line.split()[-2:]) for line in listed.stdout.splitlines() if line.strip()}

    def stop_sshd(self, host: int) -> None:
        daemon = self.daemons[host - 1]
        daemon.terminate()
        daemon.wait(timeout=10)

    def remove(self) -> None:
        for daemon in self.daemons:
            daemon.terminate()
            daemon.wait(timeout=10)
        for name in self.namespaces:
            for pid in _ip("netns", "pids", name).stdout.split():  # only this test's processes live there
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            _ip("netns", "del", name)


def _ip(*args, check: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def _keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


@pytest.fixture
def two_hosts(tmp_path):
    reason = _why_no_hosts()
    if reason:
        pytest.skip(reason)
    folder = tmp_path / "hosts"
    folder.mkdir()
    hosts = TwoHosts(folder)
    try:
        hosts.make()
        hosts.hostfile.write_text(
            json.dumps({"backend": "ring", "hosts": [{"ssh": a, "ips": [a]} for a in HOST_ADDRESSES]})
        )
        yield hosts
    finally:
        hosts.remove()


def test_a_hostfile_run_over_ssh_on_two_hosts_equals_one_process_with_the_same_global_batch(
    reference, tiny_env, isolated_env, two_hosts, tmp_path
):
    launcher_log = tmp_path / "launcher.stderr"
    with launcher_log.open("w") as stderr:
        launcher = subprocess.Popen(
            two_hosts.on(
                1, *command("run", "--dataset", reference["dataset"], "--hostfile", two_hosts.hostfile, *CONFIG)
            ),
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=two_hosts.env(),
        )
        seen, host_2 = [], None
        for line in launcher.stdout:
            seen.append(json.loads(line))
            if host_2 is None and seen[-1]["event"] == "step":  # mid-run: who runs on host 2, talking to whom
                host_2 = {"ranks": two_hosts.ranks(2), "connections": two_hosts.connections(2)}
        launcher.wait(timeout=120)
    stderr_text = launcher_log.read_bytes().decode()  # as written: read_text() would turn \r\n into \n

    assert launcher.returncode == 0, stderr_text
    start, done = seen[0], seen[-1]
    assert start["event"] == "start" and start["distributed"] == {"world_size": 2, "backend": "ring"}
    assert done["event"] == "done" and done["status"] == "finished" and done["step"] == ITERS
    assert [e["step"] for e in seen if e["event"] == "step"] == list(range(1, ITERS + 1))
    # rank 1 ran on host 2, started by its sshd, with the ring between the hosts' own addresses
    assert host_2["ranks"] == ["1"], host_2
    ring = {
        (local, peer)
        for local, peer in host_2["connections"]
        if local.startswith(f"{HOST_ADDRESSES[1]}:")
        and peer.startswith(f"{HOST_ADDRESSES[0]}:")
        and RING_PORTS & {local.rsplit(":", 1)[1], peer.rsplit(":", 1)[1]}
    }
    assert ring, host_2["connections"]
    for log in two_hosts.sshd_logs:  # each rank was started over ssh from host 1, with the test's key
        assert f"Accepted publickey for root from {HOST_ADDRESSES[0]}" in log.read_text()
    assert "\r" not in stderr_text  # the ranks' lines come through a pty; the launcher's log is plain
    run_dir = isolated_env / "runs" / done["run_id"]
    assert json.loads((run_dir / "config.json").read_text())["distributed"]["world_size"] == 2

    numbers = _differences(run_dir, reference)

    print(f"\n2 hosts over ssh vs 1 process, max |difference|: {numbers}")


def test_a_host_that_does_not_answer_over_ssh_fails_the_run_before_any_rank_starts_naming_it(
    tiny_env, isolated_env, two_hosts, dataset
):
    two_hosts.stop_sshd(2)

    result = subprocess.run(
        two_hosts.on(1, *command("run", "--dataset", dataset, "--hostfile", two_hosts.hostfile, "--events")),
        capture_output=True,
        text=True,
        env=two_hosts.env(),
        timeout=120,
    )

    message = (
        f"cannot reach {HOST_ADDRESSES[1]} over ssh (ssh: connect to host {HOST_ADDRESSES[1]} port 22: Connection "
        f"refused); every host in {two_hosts.hostfile} needs ssh without a password from this one: try "
        f"`ssh -o BatchMode=yes {HOST_ADDRESSES[1]} true`"
    )
    assert result.returncode == 1, result.stderr  # a failure that may pass, not bad input
    assert events(result.stdout) == [{"event": "error", "message": message, "exit_code": 1}]
    assert result.stderr.strip().splitlines()[-1] == f"training: error: {message}"
    assert "Traceback" not in result.stderr and "mlx.launch" not in result.stderr  # no rank was started
    assert two_hosts.ranks(1) == [] and not any((isolated_env / "runs").glob("2*"))


def test_a_hostfile_that_is_not_one_is_refused_in_one_line_with_exit_code_2(tiny_env, tmp_path):
    hostfile = tmp_path / "hosts.json"
    hostfile.write_text(json.dumps({"hosts": [{"ips": ["10.254.0.2"]}]}))

    result = cli("run", "--hostfile", hostfile)

    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"training: error: TRAIN_DISTRIBUTED: {hostfile} is not an mlx.launch hostfile (KeyError: 'ssh'); "
        'it holds {"hosts": [{"ssh": NAME, "ips": [ADDRESS]}, ...]}'
    ]
