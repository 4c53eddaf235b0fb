"""Settings of the bot package, read from the environment and `.env` (common/settings.py).

The token is a SecretStr so it never appears in a repr, a log line or an error message.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Annotated, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.cron import CronTrigger
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode

from common.settings import HomeSettings

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
_ID_SEPARATORS = re.compile(r"[,\s]+")


class BotSettings(HomeSettings):
    telegram_bot_token: SecretStr | None = Field(default=None, description="Empty = console mode")
    telegram_base_url: str = "https://api.telegram.org/bot"
    admin_user_ids: Annotated[tuple[int, ...], NoDecode] = ()
    retrain_cron: str = "0 3 * * *"
    retrain_timezone: str = "Europe/Lisbon"
    retrain_quiet_hours: str = Field(
        default="08-23",
        description="Local hours START-END when a missed night is not caught up (fans chat); empty = none",
    )
    retrain_retry_minutes: int = Field(
        default=30, ge=1, description="A nightly run that finds another pipeline running tries again this much later"
    )
    first_training_at_start: bool = Field(
        default=True, description="A base model without any adapter (no factory one) trains its first right after start"
    )
    retrain_misfire_grace_s: int = Field(
        default=3600, ge=1, description="How late a missed nightly run may still start"
    )
    rate_limit_per_minute: int = Field(default=10, ge=1, description="Questions per user per minute")
    updates_per_minute: int = Field(
        default=30,
        ge=1,
        description="Updates of any kind (commands, votes, "
        "stickers, questions) per user per minute; admins are not limited",
    )
    max_question_chars: int = Field(default=1000, ge=1)
    stream_edit_interval: float = Field(
        default=1.0, ge=0.0, description="Seconds between streamed drafts/edits; Telegram wants >= 1"
    )
    retrain_progress_interval: float = Field(
        default=3.0,
        ge=0.0,
        description="Seconds between edits of /retrain's progress message: enough to follow, "
        "far below Telegram's limits",
    )
    console_user_id: int = Field(default=1, description="The local user of console mode (an admin)")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Of $FARENSE_HOME/logs/bot.log (JSON lines)"
    )
    log_max_mb: float = Field(default=10.0, gt=0.0, description="bot.log and service.log are rotated at this size")
    log_backups: int = Field(default=5, ge=1, description="Rotated files kept of each (bot.log.1, service.log.1 ...)")
    log_stderr_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Of stderr (console mode: WARNING); the service sets WARNING"
    )

    @field_validator("telegram_bot_token", mode="before")
    @classmethod
    def _blank_token_is_none(cls, value):
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("log_level", "log_stderr_level", mode="before")
    @classmethod
    def _upper_level(cls, value):
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("admin_user_ids", mode="before")
    @classmethod
    def _separated_ids(cls, value):
        """ "111, 222", "111 222" and "111,222" are two ids; "111222" is one."""
        if isinstance(value, int):
            return (value,)
        if isinstance(value, str):
            parts = [part for part in _ID_SEPARATORS.split(value) if part]
            bad = [part for part in parts if not part.isdigit() or not part.isascii()]
            if bad:
                raise ValueError(
                    "ADMIN_USER_IDS must be Telegram user ids (positive integers) separated by "
                    f"commas or spaces; {bad[0]!r} is not one"
                )
            return tuple(int(part) for part in parts)
        return value

    @field_validator("admin_user_ids")
    @classmethod
    def _positive_and_unique(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(user_id < 1 for user_id in value):
            raise ValueError(
                "ADMIN_USER_IDS must be Telegram user ids (positive integers) separated by "
                f"commas or spaces; {min(value)} is not one"
            )
        repeated = sorted({user_id for user_id in value if value.count(user_id) > 1})
        if repeated:
            raise ValueError(
                f"ADMIN_USER_IDS names {', '.join(map(str, repeated))} more than once (a typo in another id?)"
            )
        return value

    @field_validator("retrain_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a name too long for a file
            raise ValueError(f"unknown time zone {value!r} (use an IANA name like Europe/Lisbon)") from None
        return value

    @model_validator(mode="after")
    def _valid_cron(self) -> BotSettings:
        try:
            self.cron_trigger()
        except ValueError as error:
            raise ValueError(f"RETRAIN_CRON is not a valid crontab line: {error}") from None
        return self

    @field_validator("retrain_quiet_hours")
    @classmethod
    def _hour_range(cls, value: str) -> str:
        if value.strip() and _quiet_hours(value) is None:
            raise ValueError(f"{value!r} is not an hour range like 08-23 (hours 0-24, start before end)")
        return value.strip()

    def in_quiet_hours(self, when: datetime) -> bool:
        hours = _quiet_hours(self.retrain_quiet_hours)
        return hours is not None and hours[0] <= when.hour < hours[1]

    def quiet_hours_end(self, when: datetime) -> datetime:
        """The end of the quiet hours `when` falls in (`when` itself outside them)."""
        if not self.in_quiet_hours(when):
            return when
        return when.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(
            hours=_quiet_hours(self.retrain_quiet_hours)[1]
        )

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.retrain_timezone)

    def cron_trigger(self) -> CronTrigger:
        return CronTrigger.from_crontab(self.retrain_cron, timezone=self.zone)

    def telegram_warnings(self) -> list[str]:
        """What a Telegram deployment should not run with silently: said at start and by doctor."""
        warnings = []
        if not self.admin_user_ids:
            warnings.append("ADMIN_USER_IDS is empty: nobody can /retrain or /rollback, nobody gets the nightly report")
        url = urlsplit(self.telegram_base_url)
        if url.scheme != "https" and url.hostname not in LOOPBACK_HOSTS:
            warnings.append(
                f"TELEGRAM_BASE_URL is not https ({url.scheme or '?'}://{url.hostname or '?'}): "
                "the bot token travels in cleartext"
            )
        return warnings

    def is_admin(self, user_id: int | None) -> bool:
        return user_id is not None and user_id in self.admin_user_ids


def _quiet_hours(text: str) -> tuple[int, int] | None:
    """ "08-23" -> (8, 23); None when it is not such a range."""
    start, _, end = text.strip().partition("-")
    if not (start.isdigit() and end.isdigit()):
        return None
    hours = int(start), int(end)
    return hours if 0 <= hours[0] < hours[1] <= 24 else None
