"""Telegram handlers: one small coroutine per command or kind of update, wired in bot/app.py."""

from __future__ import annotations

from telegram import Update
from telegram.ext import ContextTypes

from ..services import Services
from ..texts import language


def services_of(context: ContextTypes.DEFAULT_TYPE) -> Services:
    return context.application.bot_data["services"]


def user_language(update: Update) -> str:
    user = update.effective_user
    return language(user.language_code if user else None)
