"""`python -m data knowledge list|search|add|amend|remove|stats`: the knowledge base from a shell.

The same operations the bot's admin commands use, for an operator at the machine; every change is
searchable by the running bot at once (it reads the same database).
"""

from __future__ import annotations

import argparse
import json

from .knowledge import ADMIN_SOURCE, LANGS, FactRow, add_fact, amend_fact, knowledge_stats, list_facts, remove_fact
from .store import Store

EXIT_NOT_FOUND = 1


def add_knowledge_parser(commands) -> None:
    knowledge = commands.add_parser("knowledge", help="list, search, add, amend or remove facts")
    actions = knowledge.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="the most recently changed facts")
    listing.add_argument("--limit", type=int, default=20)
    listing.add_argument("--all", action="store_true", help="include removed facts")
    search = actions.add_parser("search", help="facts matching some words (bm25 ranked)")
    search.add_argument("query")
    search.add_argument("--limit", type=int, default=10)
    add = actions.add_parser("add", help="add a fact")
    add.add_argument("text")
    add.add_argument("--lang", choices=LANGS, required=True)
    add.add_argument("--source", default=ADMIN_SOURCE, help="short name of the source")
    add.add_argument("--url")
    amend = actions.add_parser("amend", help="replace a fact's text")
    amend.add_argument("id", type=int)
    amend.add_argument("text")
    amend.add_argument("--source", default=ADMIN_SOURCE)
    amend.add_argument("--url")
    remove = actions.add_parser("remove", help="take a fact out of retrieval")
    remove.add_argument("id", type=int)
    stats = actions.add_parser("stats", help="counts and the knowledge hash")
    stats.add_argument("--json", action="store_true", help="print JSON instead of text")


def run_knowledge(store: Store, args: argparse.Namespace) -> int:
    """Run one knowledge action; returns the exit code (1 when the fact does not exist)."""
    if args.action == "list":
        print_facts(list_facts(store, limit=args.limit, include_removed=args.all))
    elif args.action == "search":
        print_facts(list_facts(store, args.query, limit=args.limit))
    elif args.action == "add":
        fact_id = add_fact(store, args.text, args.lang, args.source, args.url)
        print(f"added fact {fact_id}")
    elif args.action == "amend":
        amend_fact(store, args.id, args.text, None, args.source, args.url)
        print(f"amended fact {args.id}")
    elif args.action == "remove":
        if not remove_fact(store, args.id, None):
            print(f"no live fact {args.id}")
            return EXIT_NOT_FOUND
        print(f"removed fact {args.id}")
    else:
        stats = knowledge_stats(store)
        if args.json:
            print(json.dumps(stats, indent=2))
        else:
            by = ", ".join(f"{key} {count}" for key, count in stats["by_origin_lang"].items())
            print(f"facts: {stats['live']} live ({by}), {stats['removed']} removed")
            print(f"knowledge hash: {stats['knowledge_hash']}")
    return 0


def print_facts(facts: list[FactRow]) -> None:
    if not facts:
        print("no facts")
    for fact in facts:
        number = f" #{fact.fact}" if fact.fact is not None else ""
        removed = " [removed]" if fact.removed_at else ""
        link = f" {fact.url}" if fact.url else ""
        print(f"{fact.id} [{fact.lang}{number} {fact.origin}]{removed} {fact.text}")
        print(f"    source: {fact.source}{link}")
