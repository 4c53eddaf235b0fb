"""End-to-end checks of the fake Bot API server, driven through the real python-telegram-bot."""

from __future__ import annotations

import asyncio
import datetime as dtm
import html
import json
import threading
import time

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from telegram import Bot, InlineKeyboardButton, InlineKeyboardMarkup, MessageEntity, ReplyParameters
from telegram.constants import ChatAction, ParseMode
from telegram.error import BadRequest, Conflict, Forbidden, InvalidToken, RetryAfter
from telegram.ext import (
    ApplicationBuilder,
    CallbackQueryHandler,
    CommandHandler,
    MessageHandler,
    filters,
)
from telegram.helpers import escape_markdown

from .botapi import BOT_USER, BotApiServer, make_png
from .botapi.formatting import parse_html, parse_markdown_v2

TOKEN = "123456:FARENSE-test-token"
CHAT = 4242  # a private chat: its id is the user's id
GROUP = -100777


@pytest.fixture
def server():
    with BotApiServer(TOKEN) as srv:
        yield srv


def run_with_bot(server: BotApiServer, scenario) -> None:
    """Run `scenario(bot)` on a real PTB Bot pointed at the fake server."""

    async def main() -> None:
        bot = Bot(TOKEN, base_url=server.base_url, base_file_url=server.base_file_url)
        async with bot:
            await scenario(bot)

    asyncio.run(main())


def test_get_me_returns_the_farense_bot_user(server):
    async def scenario(bot: Bot) -> None:
        me = await bot.get_me()
        assert (me.id, me.username, me.first_name) == (999, "farense_test_bot", "Farense Bot")
        assert me.is_bot
        assert me.can_join_groups and not me.can_read_all_group_messages

    run_with_bot(server, scenario)
    assert server.calls("getMe")[0].response["result"] == BOT_USER


def test_wrong_token_and_unknown_method(server):
    async def scenario() -> None:
        async with Bot("123456:WRONG", base_url=server.base_url) as bot:
            await bot.get_me()

    with pytest.raises(InvalidToken, match="was rejected by the server"):
        asyncio.run(scenario())
    unknown = httpx.post(f"{server.base_url}{TOKEN}/sendTelepathy")
    assert unknown.status_code == 404
    assert unknown.json() == {"ok": False, "error_code": 404, "description": "Not Found: method not found"}
    assert [c.response["error_code"] for c in server.calls()] == [401, 404]


def test_long_poll_blocks_until_an_update_then_times_out_empty(server):
    async def scenario(bot: Bot) -> None:
        threading.Timer(0.3, server.push_message, args=(CHAT, CHAT, "Força Farense!")).start()
        started = time.monotonic()
        updates = await bot.get_updates(timeout=5)
        assert 0.25 <= time.monotonic() - started < 3
        assert [u.message.text for u in updates] == ["Força Farense!"]
        assert updates[0].message.from_user.language_code == "pt"

        started = time.monotonic()
        assert await bot.get_updates(offset=updates[0].update_id + 1, timeout=1) == ()
        assert time.monotonic() - started >= 0.9

    run_with_bot(server, scenario)


def test_offset_confirms_and_limit_caps_updates(server):
    for text in ("um", "dois", "três"):
        server.push_message(CHAT, CHAT, text)

    async def scenario(bot: Bot) -> None:
        first = await bot.get_updates(limit=2)
        assert [u.message.text for u in first] == ["um", "dois"]
        assert first[1].update_id == first[0].update_id + 1
        assert len(await bot.get_updates()) == 3  # nothing confirmed yet
        rest = await bot.get_updates(offset=first[-1].update_id + 1)
        assert [u.message.text for u in rest] == ["três"]
        assert await bot.get_updates(offset=rest[-1].update_id + 1) == ()

    run_with_bot(server, scenario)


def test_injected_updates_parse_as_ptb_objects(server):
    _, first = server.push_message(CHAT, CHAT, "⚽ olá @farense_test_bot", username="ana_sc")
    server.push_message(CHAT, CHAT, "⚽ olá de novo", edited=True)
    server.push_message(GROUP, 7, "/jogo@farense_test_bot", chat_type="group", chat_title="Adeptos")
    server.push_message(CHAT, CHAT, "legenda", photo=True, reply_to_message=first)
    server.push_message(CHAT, CHAT, sticker=True)
    origin = {"type": "hidden_user", "date": 1700000000, "sender_user_name": "Zé"}
    server.push_message(CHAT, CHAT, "reencaminhada", forward_origin=origin)

    async def scenario(bot: Bot) -> None:
        mention, edit, command, photo, sticker, forward = await bot.get_updates()
        assert list(mention.message.parse_entities([MessageEntity.MENTION]).values()) == [
            "@farense_test_bot"
        ]  # offsets count UTF-16 units, so the emoji before it must not shift the mention
        assert mention.message.from_user.username == "ana_sc"
        assert edit.edited_message.message_id == first["message_id"]
        assert edit.edited_message.text == "⚽ olá de novo" and edit.edited_message.edit_date
        assert command.message.chat.title == "Adeptos"
        assert command.message.parse_entities() == {command.message.entities[0]: "/jogo@farense_test_bot"}
        assert photo.message.caption == "legenda" and photo.message.photo[-1].width == 320
        assert photo.message.reply_to_message.text == "⚽ olá de novo"  # its current state
        assert sticker.message.sticker.emoji == "⚽"
        assert forward.message.forward_origin.sender_user_name == "Zé"
        file = await bot.get_file(photo.message.photo[-1].file_id)
        assert bytes(await file.download_as_bytearray()).startswith(b"\x89PNG")

    run_with_bot(server, scenario)


def test_send_message_echoes_reply_and_inline_keyboard(server):
    _, question = server.push_message(CHAT, CHAT, "Quem marcou?")
    keyboard = InlineKeyboardMarkup([[InlineKeyboardButton("Ver golos", callback_data="goals:1")]])

    async def scenario(bot: Bot) -> None:
        sent = await bot.send_message(
            CHAT,
            "O Farense marcou dois!",
            reply_markup=keyboard,
            reply_parameters=ReplyParameters(question["message_id"]),
        )
        assert sent.message_id == question["message_id"] + 1
        assert sent.reply_to_message.text == "Quem marcou?"
        assert sent.reply_markup == keyboard
        assert sent.from_user.id == 999 and sent.chat.id == CHAT
        with pytest.raises(BadRequest, match="Chat not found"):
            await bot.send_message(555, "olá")
        with pytest.raises(BadRequest, match="Message to be replied not found"):
            await bot.send_message(CHAT, "x", reply_parameters=ReplyParameters(9999))

    run_with_bot(server, scenario)
    call = server.calls("sendMessage")[0]
    assert call.params["reply_markup"] == keyboard.to_dict()  # form field decoded from JSON
    assert [m["text"] for m in server.sent_messages(CHAT)] == ["O Farense marcou dois!"]


def test_send_photo_uploads_multipart_bytes_that_can_be_downloaded(server):
    server.push_message(CHAT, CHAT, "/foto")
    png = make_png(64, 48)

    async def scenario(bot: Bot) -> None:
        sent = await bot.send_photo(CHAT, photo=png, caption="<b>Golo!</b>", parse_mode=ParseMode.HTML)
        assert (sent.photo[-1].width, sent.photo[-1].height) == (64, 48)
        assert sent.caption == "Golo!" and sent.caption_entities[0].type == MessageEntity.BOLD
        file = await bot.get_file(sent.photo[-1].file_id)
        assert bytes(await file.download_as_bytearray()) == png
        again = await bot.send_photo(CHAT, photo=sent.photo[-1].file_id)  # reuse by file_id
        assert again.photo[-1].file_id == sent.photo[-1].file_id
        with pytest.raises(BadRequest, match="Image_process_failed"):
            await bot.send_photo(CHAT, photo=b"not an image")
        doc = await bot.send_document(CHAT, document=b"jornada;golos\n1;2\n", filename="tabela.csv")
        assert doc.document.file_name == "tabela.csv" and doc.document.file_size == 18

    run_with_bot(server, scenario)
    upload = server.calls("sendPhoto")[0].files["photo"]
    assert upload.data == png and upload.data.startswith(b"\x89PNG\r\n\x1a\n")
    assert server.calls("sendDocument")[0].files["document"].filename == "tabela.csv"


def test_injected_faults_surface_as_ptb_errors(server, monkeypatch):
    monkeypatch.setenv("PTB_TIMEDELTA", "true")  # RetryAfter.retry_after as timedelta, no warning
    server.push_message(CHAT, CHAT, "oi")
    server.fail_next("sendMessage", retry_after=3)
    server.fail_next("sendChatAction", error_code=403)

    async def scenario(bot: Bot) -> None:
        with pytest.raises(RetryAfter) as flood:
            await bot.send_message(CHAT, "primeira")
        assert flood.value.retry_after == dtm.timedelta(seconds=3)
        # only the next call failed
        assert (await bot.send_message(CHAT, "segunda")).text == "segunda"
        with pytest.raises(Forbidden, match="bot was blocked by the user"):
            await bot.send_chat_action(CHAT, ChatAction.TYPING)
        assert await bot.send_chat_action(CHAT, ChatAction.TYPING)

    run_with_bot(server, scenario)
    assert server.calls("sendMessage")[0].response == {
        "ok": False,
        "error_code": 429,
        "description": "Too Many Requests: retry after 3",
        "parameters": {"retry_after": 3},
    }


def test_markup_errors_and_length_limits_are_bad_requests(server):
    server.push_message(CHAT, CHAT, "oi")

    async def scenario(bot: Bot) -> None:
        with pytest.raises(BadRequest, match="Can't parse entities: character '-' is reserved"):
            await bot.send_message(CHAT, "Ganhámos 2-0!", parse_mode=ParseMode.MARKDOWN_V2)
        with pytest.raises(BadRequest, match="Can't parse entities: can't find end tag"):
            await bot.send_message(CHAT, "<b>Golo", parse_mode=ParseMode.HTML)
        with pytest.raises(BadRequest, match='unsupported start tag "br"'):
            await bot.send_message(CHAT, "a<br>b", parse_mode=ParseMode.HTML)
        escaped = "Ganhámos 2\\-0\\! *Força*"
        fallback = await bot.send_message(CHAT, escaped, parse_mode=ParseMode.MARKDOWN_V2)
        assert fallback.text == "Ganhámos 2-0! Força"
        assert fallback.entities[0].type == MessageEntity.BOLD
        with pytest.raises(BadRequest, match="Message is too long"):
            await bot.send_message(CHAT, "a" * 4097)
        assert len((await bot.send_message(CHAT, "a" * 4096)).text) == 4096
        with pytest.raises(BadRequest, match="Message text is empty"):
            await bot.send_message(CHAT, "   ")

    run_with_bot(server, scenario)
    assert sum(c.ok for c in server.calls("sendMessage")) == 2


def test_edit_delete_and_current_message_state(server):
    server.push_message(CHAT, CHAT, "oi")
    keyboard = InlineKeyboardMarkup([[InlineKeyboardButton("Sim", callback_data="yes")]])

    async def scenario(bot: Bot) -> None:
        sent = await bot.send_message(CHAT, "A pensar…", reply_markup=keyboard)
        edited = await bot.edit_message_text("Resposta final", CHAT, sent.message_id)
        assert edited.text == "Resposta final" and edited.edit_date and edited.reply_markup is None
        with pytest.raises(BadRequest, match="Message is not modified"):
            await bot.edit_message_text("Resposta final", chat_id=CHAT, message_id=sent.message_id)
        marked = await bot.edit_message_reply_markup(CHAT, sent.message_id, reply_markup=keyboard)
        assert marked.reply_markup == keyboard
        with pytest.raises(BadRequest, match="Button_data_invalid"):
            too_long = InlineKeyboardMarkup([[InlineKeyboardButton("x", callback_data="x" * 65)]])
            await bot.send_message(CHAT, "botões", reply_markup=too_long)
        with pytest.raises(BadRequest, match="Message can't be edited"):
            await bot.edit_message_text("hack", chat_id=CHAT, message_id=1)  # the user's message
        gone = await bot.send_message(CHAT, "apagar-me")
        assert await bot.delete_message(CHAT, gone.message_id)
        with pytest.raises(BadRequest, match="Message to delete not found"):
            await bot.delete_message(CHAT, gone.message_id)

    run_with_bot(server, scenario)
    [current] = server.sent_messages(CHAT)
    assert current["text"] == "Resposta final" and current["reply_markup"]["inline_keyboard"]


def test_commands_drafts_callbacks_and_chat_info(server):
    _, group_msg = server.push_message(GROUP, 7, "@farense_test_bot próximo jogo?", chat_type="supergroup")
    _, own = server.push_message(CHAT, CHAT, "oi")

    async def scenario(bot: Bot) -> None:
        assert await bot.set_my_commands([("start", "Começar"), ("jogo", "Próximo jogo")])
        assert [c.command for c in await bot.get_my_commands()] == ["start", "jogo"]
        assert await bot.get_my_commands(language_code="en") == ()
        assert await bot.delete_my_commands()
        assert await bot.get_my_commands() == ()
        with pytest.raises(BadRequest, match="Bot_command_invalid"):
            await bot.set_my_commands([("Start!", "x")])

        assert await bot.send_message_draft(CHAT, draft_id=1, text="A escre")
        with pytest.raises(BadRequest):
            await bot.send_message_draft(GROUP, draft_id=1, text="grupo")

        query = server.push_callback_query(CHAT, CHAT, own["message_id"], "yes")["callback_query"]
        assert await bot.answer_callback_query(query["id"], text="Feito")
        with pytest.raises(BadRequest, match="Query is too old"):
            await bot.answer_callback_query(query["id"])

        chat = await bot.get_chat(GROUP)
        assert (chat.type, chat.title) == ("supergroup", "Farense Adeptos")
        assert await bot.close() and await bot.log_out()

    run_with_bot(server, scenario)
    assert group_msg["entities"] == [{"type": "mention", "offset": 0, "length": 17}]
    assert server.calls("sendMessageDraft")[0].params["text"] == "A escre"


def test_form_json_and_query_bodies_are_decoded():
    with BotApiServer(TOKEN) as server:
        server.push_message(CHAT, CHAT, "oi")
        url = f"{server.base_url}{TOKEN}/sendMessage"
        markup = {"inline_keyboard": [[{"text": "a", "callback_data": "b"}]]}
        form_data = {"chat_id": str(CHAT), "text": "[1] forma", "reply_markup": json.dumps(markup)}
        form = httpx.post(url, data=form_data)
        bold = [{"type": "bold", "offset": 0, "length": 4}]
        body = httpx.post(url, json={"chat_id": CHAT, "text": "json", "entities": bold})
        query = httpx.get(url, params={"chat_id": CHAT, "text": "query"})
        assert [r.json()["ok"] for r in (form, body, query)] == [True, True, True]
        form_call = server.calls("sendMessage")[0]
        assert form_call.params == {"chat_id": CHAT, "text": "[1] forma", "reply_markup": markup}
        assert body.json()["result"]["entities"][0]["type"] == "bold"
        # Bot API method names are case-insensitive
        assert httpx.post(f"{server.base_url}{TOKEN}/GETME").json()["ok"]


def test_wait_for_times_out_with_a_readable_dump(server):
    httpx.post(f"{server.base_url}{TOKEN}/getMe")
    assert server.wait_for("getMe", timeout=1).ok
    with pytest.raises(TimeoutError, match=r"getMe\(\{\}\) -> ok"):
        server.wait_for(lambda call: call.method == "sendMessage", timeout=0.2)


def test_second_poller_terminates_the_first_with_conflict(server):
    async def scenario(bot: Bot) -> None:
        first = asyncio.create_task(bot.get_updates(timeout=3))
        await asyncio.sleep(0.3)
        async with Bot(TOKEN, base_url=server.base_url) as other_instance:
            assert await other_instance.get_updates(timeout=0) == ()
        with pytest.raises(Conflict, match="terminated by other getUpdates request"):
            await first

    run_with_bot(server, scenario)


def test_application_handles_command_text_and_button_end_to_end(server):
    menu = InlineKeyboardMarkup([[InlineKeyboardButton("Próximo jogo", callback_data="next")]])

    async def start(update, context) -> None:
        await update.message.reply_text("Olá, adepto!", reply_markup=menu)

    async def echo(update, context) -> None:
        await context.bot.send_chat_action(update.effective_chat.id, ChatAction.TYPING)
        await update.message.reply_text(f"Disseste: {update.message.text}")

    async def button(update, context) -> None:
        await update.callback_query.answer()
        await update.callback_query.edit_message_text("Domingo às 18h no São Luís")

    async def wait(predicate, since=0):
        return await asyncio.to_thread(server.wait_for, predicate, 5, since)

    async def scenario() -> None:
        app = ApplicationBuilder().token(TOKEN).base_url(server.base_url).build()
        app.add_handler(CommandHandler("start", start))
        app.add_handler(MessageHandler(filters.TEXT & ~filters.COMMAND, echo))
        app.add_handler(CallbackQueryHandler(button))
        await app.initialize()
        await app.start()
        await app.updater.start_polling(poll_interval=0, timeout=1)
        try:
            server.push_message(CHAT, CHAT, "/start")
            welcome = await wait(lambda c: c.method == "sendMessage" and c.ok)
            assert welcome.params["reply_markup"] == menu.to_dict()

            mark = len(server.calls())
            server.push_message(CHAT, CHAT, "quando joga o Farense?")
            reply = await wait(lambda c: c.method == "sendMessage", since=mark)
            assert reply.params["text"] == "Disseste: quando joga o Farense?"
            assert server.calls("sendChatAction")[0].params["action"] == "typing"

            menu_id = welcome.response["result"]["message_id"]
            server.push_callback_query(CHAT, CHAT, menu_id, "next")
            await wait(lambda c: c.method == "editMessageText" and c.ok)
            assert server.calls("answerCallbackQuery")[0].ok
        finally:
            await app.updater.stop()
            await app.stop()
            await app.shutdown()

    asyncio.run(scenario())
    texts = [m["text"] for m in server.sent_messages(CHAT)]
    assert texts == ["Domingo às 18h no São Luís", "Disseste: quando joga o Farense?"]
    pending = httpx.get(f"{server.base_url}{TOKEN}/getWebhookInfo").json()["result"]
    assert pending["pending_update_count"] == 0  # PTB confirmed every update on shutdown


@settings(max_examples=60, deadline=None)
@given(st.text(st.characters(blacklist_categories=("Cs",)), max_size=40))
def test_escaped_text_round_trips_through_markup_parsers(text):
    assert parse_markdown_v2(escape_markdown(text, version=2)) == (text, [])
    assert parse_html(html.escape(text, quote=False)) == (text, [])
