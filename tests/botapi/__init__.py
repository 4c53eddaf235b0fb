"""A standard-library fake of the Telegram Bot API for end-to-end tests of the PTB bot."""

from .media import make_png
from .model import BOT_USER, Call, UploadedFile
from .server import BotApiServer

__all__ = ["BOT_USER", "BotApiServer", "Call", "UploadedFile", "make_png"]
