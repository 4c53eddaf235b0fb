"""`python -m inference "prompt"`: one JSON object on stdout, logs on stderr, non-zero exit on error
(2 for a usage error, as argparse has it; `--help` is plain text).

Grounded answers need the knowledge base. On a fresh FARENSE_HOME nothing has opened the store yet,
so this entry point has it opened (which migrates it and imports the seed facts) by running
`python -m data knowledge stats` in a child process: inference imports nothing of data's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from common.settings import protect_home

log = logging.getLogger("inference")


class JsonUsageParser(argparse.ArgumentParser):
    """Reports a usage error as the JSON error object on stdout (what a caller parses), with
    argparse's usage text on stderr for a person, and argparse's exit status 2."""

    def error(self, message: str):
        print(_error_json(None, f"{message} ({' '.join(self.format_usage().split())})"))
        self.exit(2, f"{self.format_usage()}{self.prog}: error: {message}\n")


def _error_json(prompt: str | None, error: str) -> str:
    """Every failure's output: the prompt (None when the arguments did not parse) and why."""
    return json.dumps({"prompt": prompt, "status": "error", "error": error}, ensure_ascii=False)


def main(argv: list[str] | None = None) -> int:
    parser = JsonUsageParser(prog="python -m inference", description=__doc__)
    parser.add_argument("prompt")
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument("--adapter", type=Path, help="LoRA adapter folder (default: production adapter)")
    choice.add_argument("--no-adapter", action="store_true", help="answer with the bare base model")
    parser.add_argument("--model", help="overrides MODEL_PATH")
    parser.add_argument("--max-tokens", type=int)
    parser.add_argument("--temperature", type=float)
    parser.add_argument(
        "--no-grounding", action="store_true", help="answer without retrieved facts (same as GROUNDING=false)"
    )
    args = parser.parse_args(argv)
    protect_home()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    try:
        # Libraries sometimes print(); stdout carries exactly one JSON object, so send them to stderr.
        with contextlib.redirect_stdout(sys.stderr):
            result = _answer(args)
    except Exception as error:  # every failure becomes a JSON error, the traceback goes to the log
        log.debug("failed", exc_info=True)
        print(_error_json(args.prompt, f"{type(error).__name__}: {error}"))
        return 1
    result["seconds"] = round(time.perf_counter() - started, 3)
    print(json.dumps(result, ensure_ascii=False))
    return 0


def _answer(args) -> dict:
    from .adapters import read_adapter
    from .engine import Engine
    from .faithfulness import guard, quote
    from .grounding import FactIndex, build_grounded, cite, used_facts
    from .settings import InferenceSettings

    overrides: dict = {"model_path": args.model} if args.model is not None else {}
    if args.no_grounding:
        overrides["grounding"] = False
    settings = InferenceSettings.load(**overrides)
    if args.adapter is not None:
        read_adapter(args.adapter)  # fail before spending seconds on loading the model
    adapter = None if args.no_adapter else (args.adapter or "auto")
    messages = [{"role": "user", "content": args.prompt}]
    index = FactIndex(settings.home.database, settings.retrieval_min_score) if settings.grounding else None
    if index is not None and not settings.home.database.exists():
        open_store(settings.home.database)
    grounding = build_grounded(messages, index, settings)
    result = {"prompt": args.prompt, "grounding": settings.grounding, "lang": grounding.lang}
    if grounding.decline is not None:  # nothing relevant is known: say so without loading a model
        return {
            **result,
            "response": grounding.decline,
            "status": "ok",
            "declined": True,
            "facts": [],
            "sources": [],
            "citation": "",
        }
    engine = Engine(settings, adapter=adapter, max_batch=1)
    try:
        if grounding.facts:  # now bound the facts block with the model's own tokenizer
            grounding = build_grounded(messages, index, settings, lambda text: len(engine.tokenizer.encode(text)))
        generation = engine.generate(grounding.messages, max_tokens=args.max_tokens, temperature=args.temperature)
        facts = [fact.text for fact in grounding.facts]
        if settings.answer_from == "fact":
            checked = quote(generation.text.strip(), facts, args.prompt)
        else:
            checked = guard(
                generation.text.strip(),
                facts,
                args.prompt,
                lambda: engine.generate(grounding.messages, max_tokens=args.max_tokens, temperature=0.0).text.strip(),
            )
    finally:
        engine.close()
        if index is not None:
            index.close()
    answer = checked.text
    used = used_facts(answer, grounding.facts, args.prompt)
    return {
        **result,
        "response": answer,
        "status": "ok",
        "declined": False,
        "facts": [
            {
                "id": fact.id,
                "fact": fact.fact,
                "lang": fact.lang,
                "score": round(fact.score, 2),
                "source": fact.source,
                "url": fact.url,
                "used": fact in used,
            }
            for fact in grounding.facts
        ],
        "sources": [{"source": fact.source, "url": fact.url} for fact in used],
        "citation": cite(answer, grounding.facts, grounding.lang, args.prompt),
        "model": generation.model,
        "adapter": generation.adapter,
        "tokens": generation.completion_tokens,
        "prompt_tokens": generation.prompt_tokens,
        "finish_reason": generation.finish_reason,
        "guard": checked.verdict,
        "unsupported": list(checked.unsupported),
        "generation_seconds": round(generation.seconds, 3),
    }


def open_store(database: Path) -> None:
    """Have the data package open the store (migrations, then the seed facts), in a child process."""
    log.info("no knowledge base at %s yet: opening the store (python -m data knowledge stats)", database)
    result = subprocess.run(
        [sys.executable, "-m", "data", "knowledge", "stats"],
        capture_output=True,
        text=True,
        env={**os.environ, "DATABASE_PATH": str(database)},
        timeout=300,
    )
    if result.returncode != 0:  # answered as before: ungrounded, with FactIndex's warning
        log.warning("could not open the store: %s", result.stderr.strip() or f"exit {result.returncode}")


if __name__ == "__main__":
    sys.exit(main())
