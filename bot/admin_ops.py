"""Admin operations shared by the Telegram handlers and the console: status, rollback, corrections,
the knowledge base.

All of it is blocking (files, SQLite, psutil): callers run these functions in a thread.
"""

from __future__ import annotations

import json
import logging
import re
import textwrap
import time
from datetime import timedelta

import psutil

from common.home import describe_disk_use
from data.builder import MANIFEST, latest_dataset
from data.curation import instructs_the_model
from data.knowledge import (
    FactRevision,
    FactRow,
    add_fact,
    amend_fact,
    fact_history,
    get_fact,
    knowledge_stats,
    list_facts,
    remove_fact,
    restore_fact,
)
from data.privacy import scrub
from data.store import LoggedMessage, Store
from inference.grounding import detect_language, drawn_on
from inference.retrieval import fold, query_terms
from training.lifecycle.messages import Note
from training.lifecycle.pipeline import pipeline_state
from training.lifecycle.registry import Registry, version_name

from .plot import gate_points, latest_run, registered_versions
from .retraining import duration
from .scheduler import next_nightly
from .services import Services
from .texts import OUTCOMES, STAGES, language, named, text

log = logging.getLogger(__name__)

FACTS_SHOWN = 15  # per /facts reply: 15 shortened facts fit one Telegram message
FACT_CHARS = 200
THUMBS_DOWN_DAYS = 7
FACT_ID = re.compile(r"#?([0-9]{1,18})")
FACT_HISTORY = re.compile(r"history\s+#?([0-9]{1,18})", re.IGNORECASE)
FACT_RESTORE = re.compile(r"restore\s+#?([0-9]{1,18})\s+(?:rev\s*|r)?([0-9]{1,9})", re.IGNORECASE)
VERSION = re.compile(r"[vV]?[0-9]{1,9}")  # what /rollback takes: v0003, V3 or 3
PLACEHOLDER = re.compile(r"\[[a-z]+\]")  # what data.privacy.scrub puts in place of personal data
_WORDS = re.compile(r"\w+")


def status_text(services: Services, lang: str) -> str:
    """The /status report: model and adapter, training, data, memory, uptime, queue."""
    engine = services.engine
    queue = text("status_queue", lang, waiting=engine.queue_length())
    lines = [
        text("status_model", lang, model=engine.model_id),
        text("status_served", lang, adapter=engine.adapter_version or text("no_adapter", lang)),
        text("status_production", lang, adapter=_production(services, lang)),
        text("status_last_training", lang, last=_last_training(services, lang)),
        text("status_next_nightly", lang, when=_next_nightly(services, lang)),
        _counts(services.store, lang),
        _thumbs_down(services, lang),
        _knowledge(services, lang),
        text("status_dataset", lang, dataset=_dataset(services, lang)),
        _memory(lang),
        text("status_disk", lang, disk=describe_disk_use(services.data_settings.home.disk_use())),
        text("status_uptime", lang, uptime=duration(time.time() - services.started)),
        queue + (text("status_queue_training", lang) if services.retrainer.running else ""),
    ]
    if latest_run(services.home) is None:
        lines.append(text("status_no_plot", lang))
    if not gate_points(registered_versions(services.home)):
        lines.append(text("status_no_accuracy_plot", lang))
    return "\n".join(lines)


def rollback(services: Services, admin_id: int, version: str, lang: str) -> str:
    """Put the previous adapter back in production, or `version` when given, and serve it now."""
    version = version.strip()
    if version and not VERSION.fullmatch(version):
        shown = version[:20] + ("…" if len(version) > 20 else "")
        return text("rollback_not_a_version", lang, shown=repr(shown))
    try:
        if version:
            registry(services).rollback_to(version_name(version), by=str(admin_id), reason=f"/rollback {version}")
        else:
            registry(services).rollback(by=str(admin_id), reason="/rollback")
    except Exception as error:  # unknown version, files or base that do not fit, nothing to roll back to
        log.warning("rollback by %s failed: %s", admin_id, error)
        return text("rollback_failed", lang, error=error)
    services.engine.refresh_production()
    return text("rolled_back", lang, adapter=services.engine.adapter_version or text("serving_base", lang))


def correct(services: Services, message_id: int, admin_id: int, fix: str, lang: str) -> str:
    """Keep an admin's better answer for training, and teach it to the knowledge base at once."""
    try:
        services.store.add_correction(message_id, admin_id, fix)
    except ValueError as error:
        return text("correction_not_saved", lang, error=error)
    saved = text("correction_saved", lang)
    logged = services.store.message(message_id)
    return saved if logged is None else f"{saved}\n{_learn(services, logged, admin_id, fix.strip(), lang)}"


def _learn(services: Services, logged: LoggedMessage, admin_id: int, fix: str, lang: str) -> str:
    """Amend the fact the answer used if it used exactly one and the fix restates it (shares its
    telling words beyond the question's), else add the fix as a new fact in the question's
    language; then make sure the same question retrieves it.

    A wrong answer often quotes a true fact about something else (retrieval ranked it first):
    amending that fact with the answer to another question would lose what it said, so the fix
    is added beside it and the reply names it for the admin to check.

    The fact holds the admin's words. Only when the question does not find them are the
    question's telling words put before them, scrubbed of personal data, and never those of a
    fan who opted out or of a question that instructs the model."""
    conversations, store = services.conversations, services.store
    used = conversations.facts_used_by(logged.question, logged.answer)
    amends = len(used) == 1 and bool(drawn_on(fix, [used[0].text], logged.question))
    try:
        if amends:
            fact_id = used[0].id
            revision = amend_fact(store, fact_id, fix, admin_id, source_message_id=logged.id)
            done = text("fact_amended", lang, id=fact_id, revision=revision)
        else:
            fact_lang = detect_language(logged.question, default=language(logged.lang))
            fact_id = add_fact(store, fix, fact_lang, author_id=admin_id, source_message_id=logged.id)
            done = text("fact_added", lang, id=fact_id)
            if used:
                done += text("fact_kept", lang, ids=", ".join(f"#{fact.id}" for fact in used))
        if conversations.index is None:
            return text("learned_grounding_off", lang, done=done)
        lead = "" if _retrieves(services, logged.question, fact_id) else _telling_words(store, logged)
        if lead:  # the fix alone is not found by the question: lead with the question's telling words
            revision = amend_fact(store, fact_id, f"{lead} — {fix}", admin_id, source_message_id=logged.id)
    except ValueError as error:
        return text("not_learned", lang, error=error)
    log.info(
        "admin %s %s fact %s from a correction of message %s",
        admin_id,
        "amended" if amends else "added",
        fact_id,
        logged.id,
    )
    found = _retrieves(services, logged.question, fact_id)
    return text(
        "learned",
        lang,
        done=done,
        lead=text("learned_lead", lang, revision=revision) if lead else "",
        found=text("learned_found" if found else "learned_not_found", lang),
    )


def _telling_words(store: Store, logged: LoggedMessage) -> str:
    """The question's words that pick facts, scrubbed, first come first; none from a fan who
    opted out or a question that instructs the model."""
    if store.is_opted_out(logged.user_id) or instructs_the_model(logged.question):
        return ""
    scrubbed = PLACEHOLDER.sub(" ", scrub(logged.question))
    telling = set(query_terms(scrubbed))
    chosen: dict[str, str] = {}
    for word in _WORDS.findall(scrubbed):
        if fold(word) in telling:
            chosen.setdefault(fold(word), word)
    return " ".join(chosen.values())


def _retrieves(services: Services, question: str, fact_id: int) -> bool:
    return fact_id in [fact.id for fact in services.conversations.ground(question).facts]


def facts_text(services: Services, query: str, admin_id: int | None, lang: str) -> str:
    """/facts: the newest facts, or those holding every word of `query`, one line each;
    `/facts history <id>` a fact's revisions, `/facts restore <id> <revision>` puts one back."""
    query = query.strip()
    history, restore = FACT_HISTORY.fullmatch(query), FACT_RESTORE.fullmatch(query)
    if history:
        return _history_text(services, int(history.group(1)), lang)
    if restore:
        return _restore_text(services, int(restore.group(1)), int(restore.group(2)), admin_id, lang)
    rows = list_facts(services.store, query or None, limit=FACTS_SHOWN)
    if query:
        if not rows:
            return text("facts_none_match", lang, query=query)
        best = text("facts_best", lang, count=FACTS_SHOWN) if len(rows) == FACTS_SHOWN else ""
        header = text("facts_matching", lang, query=query, best=best)
    else:
        if not rows:
            return text("facts_empty", lang)
        header = text("facts_newest", lang, live=knowledge_stats(services.store)["live"])
    return "\n".join([header, *(_fact_line(row, lang) for row in rows)])


def _history_text(services: Services, fact_id: int, lang: str) -> str:
    revisions = fact_history(services.store, fact_id)
    if not revisions:
        return text("fact_unknown", lang, id=fact_id)
    current = get_fact(services.store, fact_id)
    return "\n".join(
        [
            text(
                "fact_history",
                lang,
                id=fact_id,
                revision=current.revision,
                removed=text("fact_removed", lang) if current.removed_at else "",
            ),
            *(_revision_line(item, item.revision == current.revision, lang) for item in revisions),
        ]
    )


def _restore_text(services: Services, fact_id: int, revision: int, admin_id: int | None, lang: str) -> str:
    if not fact_history(services.store, fact_id):
        return text("fact_unknown", lang, id=fact_id)
    try:
        new = restore_fact(services.store, fact_id, revision, admin_id)
    except ValueError:
        return text("fact_no_revision", lang, id=fact_id, revision=revision)
    log.info(
        "admin %s restored fact %s to the words of revision %s (now revision %s)", admin_id, fact_id, revision, new
    )
    return text(
        "fact_restored",
        lang,
        id=fact_id,
        revision=revision,
        new=new,
        text=_short(get_fact(services.store, fact_id).text),
    )


def _revision_line(item: FactRevision, current: bool, lang: str) -> str:
    by = (
        text("revision_by_admin", lang, id=item.author_id)
        if item.author_id is not None
        else text("revision_by_seed", lang)
    )
    origin = text("revision_correcting", lang, id=item.source_message_id) if item.source_message_id is not None else ""
    return f"{'→' if current else ' '} r{item.revision} {item.created_at[:16]} ({by}{origin}) {_short(item.text, 120)}"


def remove_fact_text(services: Services, argument: str, admin_id: int, lang: str) -> str:
    """/fact_remove <id>: take a fact out of retrieval (kept in the database for the record)."""
    match = FACT_ID.fullmatch(argument.strip())
    if match is None:
        return text("fact_remove_usage", lang)
    fact_id = int(match.group(1))
    row = get_fact(services.store, fact_id)
    if not remove_fact(services.store, fact_id, admin_id):
        return text("fact_remove_unknown", lang, id=fact_id)
    log.info("admin %s removed fact %s", admin_id, fact_id)
    return text("fact_removed_now", lang, id=fact_id, text=_short(row.text) if row else "")


def _fact_line(row: FactRow, lang: str) -> str:
    who = text("fact_by", lang, author=row.author_id) if row.author_id is not None else ""
    message = text("fact_from_message", lang, id=row.source_message_id) if row.source_message_id is not None else ""
    revision = f", r{row.revision}" if row.revision > 1 else ""
    return f"#{row.id} [{row.lang}, {row.origin}{who}{message}{revision}] {_short(row.text)} — {row.source}"


def _short(text: str, width: int = FACT_CHARS) -> str:
    return textwrap.shorten(text, width, placeholder=" …")


def registry(services: Services) -> Registry:
    """The registry, checking adapters against the model actually served."""
    return Registry(services.home.root, base_model=services.engine.info.path)


def _production(services: Services, lang: str) -> str:
    try:
        current = registry(services).production()
    except Exception as error:  # a broken pointer is worth reporting, not crashing /status
        return text("production_unreadable", lang, error=error)
    if current is None:
        return text("no_adapter", lang)
    promoted = current.record.get("promoted_at") or current.created_at
    return text("production_since", lang, version=current.version, when=promoted) + (
        f"; {_numbers(current.metrics)}" if current.metrics else ""
    )


def _numbers(values: dict) -> str:
    """A metrics dict in one line: numbers rounded, nested or long values left out."""
    shown = [
        f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}"
        for key, value in values.items()
        if isinstance(value, (int, float, str)) and len(str(value)) < 40
    ]
    return ", ".join(shown)


def _last_training(services: Services, lang: str) -> str:
    state = pipeline_state(services.home.root)
    running = (
        text("training_running", lang, stage=named(STAGES, str(state.get("stage")), lang), since=state.get("since"))
        if state.get("running")
        else ""
    )
    last = state.get("last")
    if not last:
        return running + text("training_none", lang)
    finished = text(
        "training_finished",
        lang,
        outcome=named(OUTCOMES, str(last.get("outcome")), lang),
        version=f" {last['version']}" if last.get("version") else "",
        trigger=last.get("trigger"),
        when=last.get("finished_at"),
    )
    summary = _first_line(last, lang)
    return f"{running}{finished}" + (f" — {summary}" if summary else "")


def _first_line(last: dict, lang: str) -> str:
    """The first line of the last pipeline's report, in `lang` (in English when it was written
    before the pipeline reported in notes)."""
    notes = last.get("notes")
    if notes:
        try:
            return Note.from_dict(notes[0]).text(lang)
        except (KeyError, TypeError, AttributeError, IndexError, ValueError) as error:  # a hand-edited file
            log.warning("unreadable note in the last pipeline result: %s", error)
    return next(iter((last.get("message") or "").splitlines()), "")


def _next_nightly(services: Services, lang: str) -> str:
    when = next_nightly(services)
    if when is None:
        return text("not_scheduled", lang)
    return f"{when:%Y-%m-%d %H:%M %Z} (cron '{services.settings.retrain_cron}', {services.settings.retrain_timezone})"


def _counts(store: Store, lang: str) -> str:
    c = store.counts()
    return text(
        "status_conversations",
        lang,
        messages=c["messages"],
        up=c["feedback_up"],
        down=c["feedback_down"],
        corrections=c["corrections"],
        users=c["users"],
        opted_out=c["opted_out"],
        chats=c["chats"],
    )


def _thumbs_down(services: Services, lang: str) -> str:
    count, latest = services.store.thumbs_down_since(services.now() - timedelta(days=THUMBS_DOWN_DAYS))
    if latest is None:
        return text("status_thumbs_down", lang, days=THUMBS_DOWN_DAYS, count=count)
    return text(
        "status_thumbs_down_latest",
        lang,
        days=THUMBS_DOWN_DAYS,
        count=count,
        question=_short(latest.question, 80),
        answer=_short(latest.answer, 120),
    )


def _knowledge(services: Services, lang: str) -> str:
    stats = knowledge_stats(services.store)
    admin = sum(count for key, count in stats["by_origin_lang"].items() if key.startswith("admin/"))
    grounding = text("grounding_on" if services.conversations.index is not None else "grounding_off", lang)
    return text(
        "status_knowledge", lang, live=stats["live"], admin=admin, removed=stats["removed"], grounding=grounding
    )


def _dataset(services: Services, lang: str) -> str:
    folder = latest_dataset(services.data_settings)
    if folder is None:
        return text("dataset_none", lang)
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        splits = " · ".join(f"{name} {info['count']}" for name, info in manifest["splits"].items())
        sources = ", ".join(f"{name} {count}" for name, count in manifest["sources"].items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        return text("dataset_unreadable", lang, name=folder.name, error=error)
    return text("dataset_built", lang, name=folder.name, splits=splits, sources=sources)


def _memory(lang: str) -> str:
    rss = psutil.Process().memory_info().rss
    available = psutil.virtual_memory().available
    return text("status_memory", lang, rss=f"{rss / 2**20:.0f}", available=f"{available / 2**30:.1f}")
