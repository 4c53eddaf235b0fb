"""The public commands: /start and /help, /reset, /forget, /optout, /optin."""

from __future__ import annotations

import asyncio

from telegram import Update
from telegram.ext import ContextTypes

from ..texts import deleted_summary, text
from . import services_of, user_language


async def help_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    lang = user_language(update)
    user = update.effective_user
    services = services_of(context)
    admin = services.settings.is_admin(user.id if user else None)
    help_text = text("help", lang, backup_days=services.data_settings.backup_max_age_days)
    await update.message.reply_text(help_text + ("\n\n" + text("admin_help", lang) if admin else ""))


async def reset(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    services_of(context).conversations.reset(update.effective_chat.id)
    await update.message.reply_text(text("reset", user_language(update)))


async def forget(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Delete at once (a right the user exercises, no confirmation step) and say what went, after
    any answer the user is still being given (which is not stored)."""
    services, user = services_of(context), update.effective_user
    counts = await services.conversations.forget_user(user.id, services.data_settings.home)
    lang = user_language(update)
    summary = deleted_summary(counts, lang)
    await update.message.reply_text(text("forgot", lang, details=summary) if summary else text("forgot_nothing", lang))


async def opt_out(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    await asyncio.to_thread(services_of(context).store.set_opt_out, update.effective_user.id, True)
    await update.message.reply_text(text("optout", user_language(update)))


async def opt_in(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    await asyncio.to_thread(services_of(context).store.set_opt_out, update.effective_user.id, False)
    await update.message.reply_text(text("optin", user_language(update)))
