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
from inference.grounding import detect_language
from inference.retrieval import fold, query_terms
from training.lifecycle.pipeline import pipeline_state
from training.lifecycle.registry import Registry, version_name

from .plot import gate_points, latest_run, registered_versions
from .retraining import duration
from .scheduler import next_nightly
from .services import Services
from .texts import language, text

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


def status_text(services: Services) -> str:
    """The /status report: model and adapter, training, data, memory, uptime, queue."""
    engine = services.engine
    lines = [
        f"Model: {engine.model_id}",
        f"Adapter served: {engine.adapter_version or 'none (base model)'}",
        f"Adapter in production: {_production(services)}",
        f"Last training: {_last_training(services)}",
        f"Next nightly training: {_next_nightly(services)}",
        f"Conversations: {_counts(services.store)}",
        f"Thumbs down ({THUMBS_DOWN_DAYS} days): {_thumbs_down(services)}",
        f"Knowledge base: {_knowledge(services)}",
        f"Dataset: {_dataset(services)}",
        f"Memory: {_memory()}",
        f"Disk: {describe_disk_use(services.data_settings.home.disk_use())}",
        f"Uptime: {duration(time.time() - services.started)}",
        f"Queue: {engine.queue_length()} waiting for the model"
        + ("; a training run is in progress" if services.retrainer.running else ""),
    ]
    if latest_run(services.home) is None:
        lines.append("Loss plot: no training run yet.")
    if not gate_points(registered_versions(services.home)):
        lines.append("Accuracy plot: no adapter version has gate figures yet.")
    return "\n".join(lines)


def rollback(services: Services, admin_id: int, version: str = "") -> str:
    """Put the previous adapter back in production, or `version` when given, and serve it now."""
    version = version.strip()
    if version and not VERSION.fullmatch(version):
        shown = version[:20] + ("…" if len(version) > 20 else "")
        return f"Rollback failed: {shown!r} is not a version (expected e.g. v0003 or 3)"
    try:
        if version:
            registry(services).rollback_to(version_name(version), by=str(admin_id), reason=f"/rollback {version}")
        else:
            registry(services).rollback(by=str(admin_id), reason="/rollback")
    except Exception as error:  # unknown version, files or base that do not fit, nothing to roll back to
        log.warning("rollback by %s failed: %s", admin_id, error)
        return f"Rollback failed: {error}"
    services.engine.refresh_production()
    return f"Rolled back. Now serving: {services.engine.adapter_version or 'the base model (no adapter)'}"


def correct(services: Services, message_id: int, admin_id: int, fix: str) -> str:
    """Keep an admin's better answer for training, and teach it to the knowledge base at once."""
    try:
        services.store.add_correction(message_id, admin_id, fix)
    except ValueError as error:
        return f"Correction not saved: {error}"
    saved = "Correction saved — it will be used in the next training run."
    logged = services.store.message(message_id)
    return saved if logged is None else f"{saved}\n{_learn(services, logged, admin_id, fix.strip())}"


def _learn(services: Services, logged: LoggedMessage, admin_id: int, fix: str) -> str:
    """Amend the fact the answer used if it used exactly one, else add the fix as a new fact in
    the question's language; then make sure the same question retrieves it.

    The fact holds the admin's words. Only when the question does not find them are the
    question's telling words put before them, scrubbed of personal data, and never those of a
    fan who opted out or of a question that instructs the model."""
    conversations, store = services.conversations, services.store
    used = conversations.facts_used_by(logged.question, logged.answer)
    try:
        if len(used) == 1:
            fact_id = used[0].id
            done = f"amended (revision {amend_fact(store, fact_id, fix, admin_id, source_message_id=logged.id)})"
        else:
            lang = detect_language(logged.question, default=language(logged.lang))
            fact_id, done = add_fact(store, fix, lang, author_id=admin_id, source_message_id=logged.id), "added"
        if conversations.index is None:
            return f"Fact #{fact_id} {done} in the knowledge base (grounding is off: answers do not use it)."
        lead = "" if _retrieves(services, logged.question, fact_id) else _telling_words(store, logged)
        if lead:  # the fix alone is not found by the question: lead with the question's telling words
            revision = amend_fact(store, fact_id, f"{lead} — {fix}", admin_id, source_message_id=logged.id)
    except ValueError as error:
        return f"Not put in the knowledge base: {error}"
    log.info("admin %s %s fact %s from a correction of message %s", admin_id, done, fact_id, logged.id)
    found = _retrieves(services, logged.question, fact_id)
    return (
        f"Fact #{fact_id} {done} in the knowledge base"
        + (f", led by telling words of the question (revision {revision})" if lead else "")
        + " — "
        + (
            "the next answer to that question uses it."
            if found
            else "but that question still does not retrieve it; /facts shows it."
        )
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


def facts_text(services: Services, query: str, admin_id: int | None = None, lang: str = "en") -> str:
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
            return f"No fact holds all of: {query}"
        more = f" (the best {FACTS_SHOWN})" if len(rows) == FACTS_SHOWN else ""
        header = f"Facts with {query}{more}:"
    else:
        stats = knowledge_stats(services.store)
        if not rows:
            return "The knowledge base is empty."
        header = (
            f"Newest of {stats['live']} facts (/facts <words> searches,"
            f" /fact_remove <id> removes, /facts history <id> shows the revisions):"
        )
    return "\n".join([header, *(_fact_line(row) for row in rows)])


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
            *(_revision_line(item, item.revision == current.revision) for item in revisions),
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


def _revision_line(item: FactRevision, current: bool) -> str:
    by = f"admin {item.author_id}" if item.author_id is not None else "seed"
    origin = f", correcting message {item.source_message_id}" if item.source_message_id is not None else ""
    return f"{'→' if current else ' '} r{item.revision} {item.created_at[:16]} ({by}{origin}) {_short(item.text, 120)}"


def remove_fact_text(services: Services, argument: str, admin_id: int) -> str:
    """/fact_remove <id>: take a fact out of retrieval (kept in the database for the record)."""
    match = FACT_ID.fullmatch(argument.strip())
    if match is None:
        return "Usage: /fact_remove <id> — the number /facts shows after #."
    fact_id = int(match.group(1))
    row = get_fact(services.store, fact_id)
    if not remove_fact(services.store, fact_id, admin_id):
        return f"There is no fact #{fact_id} to remove (see /facts)."
    log.info("admin %s removed fact %s", admin_id, fact_id)
    return f"Removed fact #{fact_id}: {_short(row.text) if row else ''}"


def _fact_line(row: FactRow) -> str:
    who = f", by {row.author_id}" if row.author_id is not None else ""
    message = f", from message {row.source_message_id}" if row.source_message_id is not None else ""
    revision = f", r{row.revision}" if row.revision > 1 else ""
    return f"#{row.id} [{row.lang}, {row.origin}{who}{message}{revision}] {_short(row.text)} — {row.source}"


def _short(text: str, width: int = FACT_CHARS) -> str:
    return textwrap.shorten(text, width, placeholder=" …")


def registry(services: Services) -> Registry:
    """The registry, checking adapters against the model actually served."""
    return Registry(services.home.root, base_model=services.engine.info.path)


def _production(services: Services) -> str:
    try:
        current = registry(services).production()
    except Exception as error:  # a broken pointer is worth reporting, not crashing /status
        return f"unreadable ({error})"
    if current is None:
        return "none (base model)"
    promoted = current.record.get("promoted_at") or current.created_at
    return f"{current.version}, promoted {promoted}" + (f"; {_numbers(current.metrics)}" if current.metrics else "")


def _numbers(values: dict) -> str:
    """A metrics dict in one line: numbers rounded, nested or long values left out."""
    shown = [
        f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}"
        for key, value in values.items()
        if isinstance(value, (int, float, str)) and len(str(value)) < 40
    ]
    return ", ".join(shown)


def _last_training(services: Services) -> str:
    state = pipeline_state(services.home.root)
    running = f"running now (stage {state.get('stage')}, since {state.get('since')}); " if state.get("running") else ""
    last = state.get("last")
    if not last:
        return running + "none yet"
    version = f" {last['version']}" if last.get("version") else ""
    summary = (last.get("message") or "").splitlines()[:1]
    return f"{running}{last.get('outcome')}{version} ({last.get('trigger')}, finished {last.get('finished_at')})" + (
        f" — {summary[0]}" if summary else ""
    )


def _next_nightly(services: Services) -> str:
    when = next_nightly(services)
    if when is None:
        return "not scheduled"
    return f"{when:%Y-%m-%d %H:%M %Z} (cron '{services.settings.retrain_cron}', {services.settings.retrain_timezone})"


def _counts(store: Store) -> str:
    c = store.counts()
    return (
        f"answers {c['messages']} · 👍 {c['feedback_up']} · 👎 {c['feedback_down']} · "
        f"corrections {c['corrections']} · users {c['users']} (opted out {c['opted_out']}) · "
        f"chats {c['chats']}"
    )


def _thumbs_down(services: Services) -> str:
    count, latest = services.store.thumbs_down_since(services.now() - timedelta(days=THUMBS_DOWN_DAYS))
    if latest is None:
        return f"{count}"
    return f'{count} — latest: "{_short(latest.question, 80)}" → "{_short(latest.answer, 120)}"'


def _knowledge(services: Services) -> str:
    stats = knowledge_stats(services.store)
    admin = sum(count for key, count in stats["by_origin_lang"].items() if key.startswith("admin/"))
    grounding = "on" if services.conversations.index is not None else "off (GROUNDING=false)"
    return f"{stats['live']} facts ({admin} from admins, {stats['removed']} removed); grounding {grounding}"


def _dataset(services: Services) -> str:
    folder = latest_dataset(services.data_settings)
    if folder is None:
        return "none built yet"
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        splits = " · ".join(f"{name} {info['count']}" for name, info in manifest["splits"].items())
        sources = ", ".join(f"{name} {count}" for name, count in manifest["sources"].items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        return f"{folder.name} (unreadable manifest: {error})"
    return f"{folder.name}: {splits} (sources: {sources})"


def _memory() -> str:
    rss = psutil.Process().memory_info().rss
    available = psutil.virtual_memory().available
    return f"process {rss / 2**20:.0f} MiB RSS, {available / 2**30:.1f} GiB available"
