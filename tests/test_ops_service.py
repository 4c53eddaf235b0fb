"""Service files: the systemd unit and the launchd plist are rendered (never installed here) and
validated — the unit by `systemd-analyze verify` when this machine has it, and always by the strict
parser below (the only check where systemd is missing, e.g. on a Mac); the plist by plistlib."""

from __future__ import annotations

import os
import plistlib
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bot.os_service import LABEL, NAME, ServiceSpec, bot_running, hold_running_lock, render_launchd, render_systemd

# Every key the unit may use, per section, and how often; anything else is a mistake.
UNIT_KEYS = {
    "Unit": {"Description": 1, "Documentation": 1, "After": 1, "Wants": 1, "StartLimitIntervalSec": 1},
    "Service": {
        "Type": 1,
        "WorkingDirectory": 1,
        "Environment": None,
        "ExecStart": 1,
        "Restart": 1,
        "RestartSec": 1,
        "TimeoutStopSec": 1,
        "UMask": 1,
        "StandardOutput": 1,
        "StandardError": 1,
        "User": 1,
    },
    "Install": {"WantedBy": 1},
}
RESTART = {"no", "on-success", "on-failure", "on-abnormal", "on-watchdog", "on-abort", "always"}


class UnitError(ValueError):
    pass


def unescape(value: str) -> str:
    """systemd's %-specifiers: the unit uses none, so every % must be doubled."""
    if re.search(r"%(?!%)", value.replace("%%", "")):
        raise UnitError(f"unescaped % specifier in {value!r}")
    return value.replace("%%", "%")


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """A strict reading of the unit: known sections in order, known keys, values that systemd accepts."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.startswith(("#", ";")):
            continue
        if line.endswith("\\"):
            raise UnitError(f"line {number}: continuation lines are not expected")
        if line.startswith("["):
            current = line.strip("[]")
            if current not in UNIT_KEYS or current in sections or list(UNIT_KEYS).index(current) < len(sections):
                raise UnitError(f"line {number}: unexpected section [{current}]")
            sections[current] = {}
            continue
        key, equals, value = line.partition("=")
        if current is None or not equals or key != key.strip() or key not in UNIT_KEYS[current]:
            raise UnitError(f"line {number}: unknown or misplaced key {key!r}")
        sections[current].setdefault(key, []).append(value)
        limit = UNIT_KEYS[current][key]
        if limit is not None and len(sections[current][key]) > limit:
            raise UnitError(f"line {number}: {key} repeated")
    if list(sections) != list(UNIT_KEYS):
        raise UnitError(f"sections {list(sections)}, expected {list(UNIT_KEYS)}")
    service = sections["Service"]
    if service["Type"] != ["simple"] or service["Restart"][0] not in RESTART:
        raise UnitError(f"Type/Restart: {service['Type']} {service['Restart']}")
    for key in ("RestartSec", "TimeoutStopSec"):
        if not service[key][0].isdigit():
            raise UnitError(f"{key} is not a number of seconds: {service[key]}")
    if not sections["Unit"]["StartLimitIntervalSec"][0].isdigit():
        raise UnitError("StartLimitIntervalSec is not a number")
    for key in ("StandardOutput", "StandardError"):
        if not service[key][0].startswith("append:/"):
            raise UnitError(f"{key} must append to an absolute path: {service[key]}")
    if not Path(unescape(service["WorkingDirectory"][0])).is_absolute():
        raise UnitError("WorkingDirectory must be absolute")
    if not sections["Install"]["WantedBy"][0].endswith(".target"):
        raise UnitError("WantedBy must name a target")
    return sections


def environment(service: dict[str, list[str]]) -> dict[str, str]:
    variables = {}
    for line in service["Environment"]:
        for word in shlex.split(unescape(line)):  # systemd's quoting of Environment= is shell-like
            name, equals, value = word.partition("=")
            if not equals or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise UnitError(f"Environment word {word!r} is not NAME=value")
            variables[name] = value
    return variables


def exec_start(service: dict[str, list[str]]) -> list[str]:
    words = shlex.split(unescape(service["ExecStart"][0]).replace("$$", "$"))
    if not Path(words[0]).is_absolute() or not os.access(words[0], os.X_OK):
        raise UnitError(f"ExecStart must start with an absolute executable: {words[0]}")
    return words


def systemd_verify(unit: Path) -> None:
    """systemd-analyze verify exits 0 even on bad values, so any complaint about the unit fails."""
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    complaints = [line for line in (result.stderr + result.stdout).splitlines() if unit.name in line]
    assert result.returncode == 0 and not complaints, result.stderr


def render_cli(platform: str, out: Path, *extra: str, cwd: Path | None = None) -> Path:
    result = subprocess.run(
        [sys.executable, "-m", "bot", "service", "render", "--platform", platform, "--out", str(out), *extra],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )
    assert result.returncode == 0, result.stderr
    return Path(result.stdout.strip())


def test_the_systemd_unit_runs_the_bot_restarts_on_failure_and_logs_to_farense_home(isolated_env, tmp_path):
    unit = render_cli("linux", tmp_path / "out")
    assert unit == tmp_path / "out" / f"{NAME}.service"
    sections = parse_unit(unit.read_text())
    service = sections["Service"]
    assert exec_start(service) == [sys.executable, "-m", "bot"]
    assert unescape(service["WorkingDirectory"][0]) == str(tmp_path)  # the folder with .env
    assert service["Restart"] == ["on-failure"] and int(service["TimeoutStopSec"][0]) >= 120
    assert service["StandardOutput"] == service["StandardError"] == [f"append:{isolated_env}/logs/service.log"]
    assert service["UMask"] == ["0077"]
    variables = environment(service)
    assert variables["FARENSE_HOME"] == str(isolated_env) and variables["LOG_STDERR_LEVEL"] == "WARNING"
    assert variables["PATH"].split(":")[0] == str(Path(sys.executable).parent)
    assert "User" not in service and sections["Install"]["WantedBy"] == ["default.target"]
    if shutil.which("systemd-analyze"):
        systemd_verify(unit)


def test_the_launchd_plist_parses_and_keeps_the_bot_alive_after_failures_only(isolated_env, tmp_path):
    plist = render_cli("macos", tmp_path / "out")
    assert plist.name == f"{LABEL}.plist"
    job = plistlib.loads(plist.read_bytes())
    assert job["Label"] == LABEL and job["ProgramArguments"] == [sys.executable, "-m", "bot"]
    assert job["WorkingDirectory"] == str(tmp_path) and job["RunAtLoad"] is True
    assert job["KeepAlive"] == {"SuccessfulExit": False} and job["ThrottleInterval"] >= 10
    assert job["StandardOutPath"] == job["StandardErrorPath"] == str(isolated_env / "logs" / "service.log")
    assert job["EnvironmentVariables"]["FARENSE_HOME"] == str(isolated_env)
    assert job["EnvironmentVariables"]["LOG_STDERR_LEVEL"] == "WARNING" and "UserName" not in job
    assert set(job) <= {
        "Label",
        "ProgramArguments",
        "WorkingDirectory",
        "EnvironmentVariables",
        "RunAtLoad",
        "KeepAlive",
        "ThrottleInterval",
        "ExitTimeOut",
        "ProcessType",
        "Umask",
        "StandardOutPath",
        "StandardErrorPath",
    }
    assert job["Umask"] == 0o077
    if shutil.which("plutil"):
        lint = subprocess.run(["plutil", "-lint", str(plist)], capture_output=True, text=True)
        assert lint.returncode == 0, lint.stdout + lint.stderr


def test_awkward_paths_are_escaped_and_system_scope_runs_as_the_user(tmp_path):
    workdir = tmp_path / "my bot%1 $HOME"
    workdir.mkdir()
    spec = ServiceSpec.here(Path("state dir"), system=True, workdir=workdir, platform="linux")
    unit = tmp_path / f"{NAME}.service"
    unit.write_text(render_systemd(spec))
    sections = parse_unit(unit.read_text())
    service = sections["Service"]
    assert unescape(service["WorkingDirectory"][0]) == str(workdir)
    assert environment(service)["FARENSE_HOME"] == str(workdir / "state dir")
    assert service["StandardError"] == [f"append:{str(workdir / 'state dir').replace('%', '%%')}/logs/service.log"]
    assert service["User"] == [spec.user] and sections["Install"]["WantedBy"] == ["multi-user.target"]
    if shutil.which("systemd-analyze"):
        systemd_verify(unit)
    job = plistlib.loads(
        render_launchd(ServiceSpec.here(Path("state dir"), system=True, workdir=workdir, platform="macos")).encode()
    )
    assert job["WorkingDirectory"] == str(workdir) and job["UserName"] == spec.user


@pytest.mark.parametrize(
    "change, problem",
    [
        (("Restart=on-failure", "Restart=sometimes"), "sometimes"),
        (("RestartSec=30", "RestartSec=30\nRestartSecs=5"), "RestartSecs"),
        (("WantedBy=default.target", "WantedBy=default.target\n[Bogus]"), "Bogus"),
    ],
)
def test_the_validators_catch_a_broken_unit(change, problem, tmp_path):
    """The checks above would fail on a wrong unit: both the strict parser and systemd-analyze."""
    spec = ServiceSpec.here(tmp_path, workdir=tmp_path, platform="linux")
    unit = tmp_path / f"{NAME}.service"
    unit.write_text(render_systemd(spec).replace(*change))
    with pytest.raises(UnitError, match=problem):
        parse_unit(unit.read_text())
    if shutil.which("systemd-analyze"):
        with pytest.raises(AssertionError, match=problem):
            systemd_verify(unit)


def test_install_needs_the_token_in_env_file_and_nothing_is_installed_or_controlled_without_it(isolated_env, tmp_path):
    env = os.environ | {"HOME": str(tmp_path / "user-home")}  # where a user unit would go
    (tmp_path / ".env").write_text("ADMIN_USER_IDS=5001\n")
    install = subprocess.run(
        [sys.executable, "-m", "bot", "service", "install"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env | {"TELEGRAM_BOT_TOKEN": "123:only-in-this-shell"},
    )
    # the service reads .env, not this shell: a token exported here would not reach it
    assert install.returncode == 2 and f"TELEGRAM_BOT_TOKEN is not set in {tmp_path / '.env'}" in install.stderr
    assert not (tmp_path / "user-home").exists()
    status = subprocess.run(
        [sys.executable, "-m", "bot", "service", "status"], capture_output=True, text=True, timeout=120, env=env
    )
    assert status.returncode == 0, status.stderr
    assert "(not installed)" in status.stdout and "bot: not running" in status.stdout
    stop = subprocess.run(
        [sys.executable, "-m", "bot", "service", "stop"], capture_output=True, text=True, timeout=120, env=env
    )
    assert stop.returncode == 2 and "not installed" in stop.stderr


def test_the_running_lock_tells_whether_a_bot_runs(isolated_env):
    assert not bot_running(isolated_env)
    first, second = hold_running_lock(isolated_env), hold_running_lock(isolated_env)  # shared: two bots may run
    assert bot_running(isolated_env)
    first.close()
    assert bot_running(isolated_env)
    second.close()
    assert not bot_running(isolated_env)
