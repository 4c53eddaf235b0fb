"""Answering eval questions as served, and the evaluation table across configurations.

`served_answers` is how the gate and `python -m training evaluate` answer a question: the prompt
comes from inference.grounding.build_grounded (retrieved facts in the system prompt) exactly as the
bot builds it, and when grounding declines, the decline text is the answer given (the bot does not
generate then either). Greedy decoding in batches, with the serving repetition penalty; then the
faithfulness guard, as served (its greedy retry is the greedy answer itself, so it goes straight
to the best fact).

`evaluate_configs` scores base and adapter, each alone, with retrieval, and with retrieval and the
guard, on one loaded base model with data.scorer (right / declined / wrong per language), so the
table says what retrieval, the guard and the adapter each add. Conversations (the multi-turn set)
are replayed as the bot serves them: a follow-up is asked with the previous answered question.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from mlx_lm.generate import BatchGenerator
from mlx_lm.sample_utils import make_logits_processors

from common.progress import Progress
from data.scorer import EvalReport, contains, evaluate, is_decline, normalise
from data.seed import ANSWER, SPLITS, Conversation, EvalItem, OODItem, load_conversations, load_eval, load_ood
from data.settings import DataSettings
from data.store import Store
from inference.adapters import read_adapter
from inference.faithfulness import KEPT, guard, quote
from inference.grounding import FactIndex, build_grounded
from inference.loading import load_base
from inference.lora import apply_adapter, remove_adapter
from inference.prompts import render_prompt
from inference.settings import InferenceSettings

from ..errors import EXIT_USAGE, guarded, parse, report
from ..lifecycle.commands import open_registry
from ..lifecycle.settings import LifecycleSettings

CONFIGS = (
    "base",
    "base+retrieval",
    "base+retrieval+guard",
    "base+retrieval+quote",
    "adapter",
    "adapter+retrieval",
    "adapter+retrieval+guard",
    "adapter+retrieval+quote",
)
# what is scored: the model's text, the text after the faithfulness guard (ANSWER_FROM=model), or
# the fact the answer drew on (ANSWER_FROM=fact); one generation serves all three
SENT = {"": "text", "+guard": "guarded", "+quote": "quoted"}
MIN_COPY_CHARS = 20  # an earlier answer this long found again inside a later one is a copy


@dataclass(frozen=True)
class ServedAnswer:
    text: str  # as generated, or the decline
    declined: bool  # grounding found nothing: the decline text was given without generating
    facts: tuple[int | None, ...]  # seed numbers of the facts in the prompt
    prompt: list[dict]  # the messages the model saw (or would have)
    guarded: str = ""  # what the bot sends with ANSWER_FROM=model: `text` after the faithfulness guard
    guard: str = "kept"  # the guard's verdict (inference.faithfulness)
    quoted: str = ""  # what the bot sends with ANSWER_FROM=fact: the fact `text` drew on

    def sent(self, serving: InferenceSettings) -> str:
        """What the bot sends for it, as configured."""
        return self.quoted if serving.answer_from == "fact" else self.guarded


def served_answers(
    model,
    tokenizer,
    questions: Sequence[str],
    serving: InferenceSettings,
    index,
    *,
    grounded: bool,
    max_tokens: int,
    previous: Sequence[str | None] | None = None,
    label: str = "answers",
) -> list[ServedAnswer]:
    """Greedy answers to questions, prompts built as the bot builds them (`previous[i]`: the
    question before questions[i] in its chat, for follow-ups); `label` names the progress shown.

    `grounded` False (or index None) is the model alone: the configured system prompt, no facts.
    """
    settings = serving.model_copy(update={"grounding": grounded})

    def count_tokens(text: str) -> int:
        return len(tokenizer.encode(text))

    previous = previous or [None] * len(questions)
    groundings = [
        build_grounded(
            [{"role": "user", "content": question}], index if grounded else None, settings, count_tokens, before
        )
        for question, before in zip(questions, previous, strict=True)
    ]
    todo = [i for i, grounding in enumerate(groundings) if grounding.decline is None]
    texts: dict[int, str] = {}
    if todo:
        prompts = [render_prompt(tokenizer, groundings[i].messages, serving.system_prompt) for i in todo]
        generated = generate_batch(
            model,
            tokenizer,
            prompts,
            max_tokens,
            label,
            logits_processors=make_logits_processors(repetition_penalty=serving.repetition_penalty),
        )
        texts = dict(zip(todo, generated, strict=True))
    answers = []
    for i, g in enumerate(groundings):
        if g.decline is not None:
            answers.append(ServedAnswer(g.decline, True, (), g.messages, g.decline, quoted=g.decline))
            continue
        facts, asked = [fact.text for fact in g.facts], g.messages[-1]["content"]
        checked = guard(texts[i].strip(), facts, asked)
        quoted = quote(texts[i].strip(), facts, asked)
        answers.append(
            ServedAnswer(
                texts[i],
                False,
                tuple(fact.fact for fact in g.facts),
                g.messages,
                checked.text,
                checked.verdict,
                quoted.text,
            )
        )
    return answers


def generate_batch(model, tokenizer, prompts: list[list[int]], max_tokens: int, label: str, **options) -> list[str]:
    """mlx-lm's batch_generate (the same BatchGenerator calls, so the same texts), counting finished
    answers as progress: the gate and the evaluation spend minutes here on a small CPU."""
    generator = BatchGenerator(model, stop_tokens=[[t] for t in tokenizer.eos_token_ids], **options)
    uids = generator.insert(prompts, [max_tokens] * len(prompts))
    tokens: dict[int, list[int]] = {uid: [] for uid in uids}
    with Progress(label, len(prompts), unit="answer") as progress:
        while responses := generator.next_generated():
            for response in responses:
                if response.finish_reason is not None:
                    progress.update()
                if response.finish_reason != "stop":
                    tokens[response.uid].append(response.token)
    generator.close()
    return [tokenizer.decode(tokens[uid]) for uid in uids]


def score(
    answers: dict[str, ServedAnswer], items: Sequence[EvalItem], ood: Sequence[OODItem], *, sent: str = "text"
) -> EvalReport:
    """data.scorer's report over answers keyed by question (as generated, or as the guard sends them)."""
    return evaluate(lambda question, _lang: getattr(answers[question], sent), list(items), list(ood))


@dataclass(frozen=True)
class TurnResult:
    conversation: str
    question: str
    expected: str  # ANSWER or DECLINE
    answer: str  # what the bot sends (after the guard)
    verdict: str  # right | declined | wrong (a decline turn is right when declined)
    copied: bool  # repeats an earlier answer of the same conversation


def conversation_results(
    model, tokenizer, conversations: Sequence[Conversation], serving: InferenceSettings, index, *, max_tokens: int
) -> dict[str, list[TurnResult]]:
    """Every turn of every conversation, answered as the bot answers it.

    The bot lets a follow-up lean on the previous question it answered from facts; what that is
    depends on retrieval only (a decline needs no model), so every turn's prompt is known up front
    and the turns are generated in one batch.
    """
    questions, previous = [], []
    for conversation in conversations:
        before = None
        for turn in conversation.turns:
            questions.append(turn.question)
            previous.append(before)
            grounding = build_grounded(
                [{"role": "user", "content": turn.question}], index, serving, previous_question=before
            )
            before = turn.question if grounding.decline is None else before
    answers = list(
        served_answers(
            model,
            tokenizer,
            questions,
            serving,
            index,
            grounded=True,
            max_tokens=max_tokens,
            previous=previous,
            label="conversations",
        )
    )
    return {sent: _turn_results(conversations, answers, sent) for sent in ("guarded", "quoted")}


def _turn_results(conversations: Sequence[Conversation], answers: list[ServedAnswer], sent: str) -> list[TurnResult]:
    """The turns scored on what is sent (`sent`: a ServedAnswer field)."""
    answered = iter(answers)
    results = []
    for conversation in conversations:
        earlier: list[str] = []
        for turn in conversation.turns:
            text = getattr(next(answered), sent)
            if turn.expected == ANSWER:
                right = all(any(contains(text, phrase) for phrase in group) for group in turn.key_facts)
                verdict = "right" if right else "declined" if is_decline(text) else "wrong"
            else:
                verdict = "right" if is_decline(text) else "wrong"
            said = normalise(text)
            copied = any(said == before or (len(before) >= MIN_COPY_CHARS and before in said) for before in earlier)
            earlier.append(said)
            results.append(TurnResult(conversation.id, turn.question, turn.expected, text, verdict, copied))
    return results


def evaluate_configs(
    configs: Sequence[str],
    adapter: Path | None,
    items: Sequence[EvalItem],
    ood: Sequence[OODItem],
    serving: InferenceSettings,
    max_tokens: int,
    conversations: Sequence[Conversation] = (),
) -> dict[str, dict]:
    """{config: {"report": EvalReport, "declined": n, "guard_fired": n, "turns": [TurnResult],
    "seconds": s}} on one base-model load. A "+guard" configuration scores the answers its
    retrieval configuration generated, as the guard passes them on: one generation serves both."""
    unknown = [name for name in configs if name not in CONFIGS]
    if unknown:
        raise ValueError(f"unknown configuration(s) {', '.join(unknown)}; choose from {', '.join(CONFIGS)}")
    if adapter is None and any(name.startswith("adapter") for name in configs):
        raise ValueError("the adapter configurations need an adapter: --adapter VERSION|PATH, or a production one")
    model, tokenizer, info = load_base(serving.model_path, serving.home.models, serving.device, serving.cpu_dtype)
    index = FactIndex(serving.home.database, serving.retrieval_min_score)
    questions = [item.question for item in items] + [probe.question for probe in ood]
    results = {}
    try:
        for generated in dict.fromkeys(name.removesuffix("+guard").removesuffix("+quote") for name in configs):
            started = time.perf_counter()
            remove_adapter(model)
            if generated.startswith("adapter"):
                apply_adapter(model, read_adapter(adapter, str(adapter)), info.layout)
            model.eval()
            grounded = generated.endswith("retrieval")
            answers = served_answers(
                model, tokenizer, questions, serving, index, grounded=grounded, max_tokens=max_tokens, label=generated
            )
            turns = (
                conversation_results(model, tokenizer, conversations, serving, index, max_tokens=max_tokens)
                if grounded
                else {}
            )
            by_question = dict(zip(questions, answers, strict=True))
            seconds = round(time.perf_counter() - started, 1)
            for suffix, sent in SENT.items():
                name = generated + suffix
                if name in configs:
                    results[name] = {
                        "report": score(by_question, items, ood, sent=sent),
                        "declined": sum(answer.declined for answer in answers[: len(items)]),
                        "guard_fired": sum(answer.guard != KEPT for answer in answers) if sent == "guarded" else None,
                        "turns": turns.get(sent, []),
                        "seconds": seconds,
                    }
    finally:
        remove_adapter(model)
        index.close()
    return {name: results[name] for name in configs}


def table(results: dict[str, dict]) -> str:
    """One row per configuration: right / declined / wrong per language, out-of-domain declines,
    how often the guard replaced an answer, and the conversations' turns."""
    header = (
        f"{'configuration':<25}{'EN r/d/w':>17}{'PT r/d/w':>17}{'right':>7}{'wrong':>7}{'OOD decl':>9}"
        f"{'guard':>6}{'turns r/d/w':>18}{'copies':>7}{'secs':>6}"
    )
    rows = [header, "-" * len(header)]
    for name, result in results.items():
        report = result["report"]
        turns = result["turns"]
        rows.append(
            f"{name:<25}{_shares(report.verdicts('en')):>17}{_shares(report.verdicts('pt')):>17}"
            f"{_pct(report.accuracy):>7}{_pct(report.wrong_rate):>7}{_pct(report.ood_decline_rate):>9}"
            f"{'-' if result['guard_fired'] is None else result['guard_fired']:>6}"
            f"{_turn_shares(turns) if turns else '-':>18}"
            f"{sum(turn.copied for turn in turns) if turns else '-':>7}{result['seconds']:>6.0f}"
        )
    return "\n".join(rows)


def _shares(verdicts: dict[str, float | None]) -> str:
    return "/".join(f"{100 * value:.0f}" if value is not None else "-" for value in verdicts.values())


def _turn_shares(turns: list[TurnResult]) -> str:
    return "/".join(
        f"{100 * sum(t.verdict == v for t in turns) / len(turns):.0f}" for v in ("right", "declined", "wrong")
    )


def _pct(value) -> str:
    return f"{value:.1%}" if isinstance(value, (int, float)) else "n/a"


# --- python -m training evaluate -----------------------------------------------------------------


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training evaluate",
        description=(
            "right / declined / wrong of base and adapter, alone, with retrieval and with the faithfulness "
            "guard, EN and PT, plus out-of-domain declines and the multi-turn conversations"
        ),
    )
    _configure_evaluate(parser)
    args = parse(parser, argv)
    return args if isinstance(args, int) else _evaluate(args)


@guarded
def _evaluate(args: argparse.Namespace) -> int:
    from .gate import gate_items  # gate imports this module

    serving = InferenceSettings.load()
    configs = [name.strip() for name in args.configs.split(",") if name.strip()] if args.configs else list(CONFIGS)
    adapter = _adapter_folder(args.adapter, open_registry())
    data_settings = DataSettings.load()
    Store(data_settings.home.database).close()  # a fresh home gets its knowledge base seeded
    seed_dir, problems = data_settings.seed_dir, []
    items, ood = load_eval(seed_dir, problems, args.set), load_ood(seed_dir, problems, args.set)
    conversations = load_conversations(seed_dir, problems, args.set)
    if args.limit:
        items = gate_items(items, args.limit)
        conversations = conversations[: max(1, args.limit // 4)]
    if not items:
        report(f"no {args.set} eval items in {seed_dir}")
        return EXIT_USAGE
    if adapter is None:
        configs = [name for name in configs if not name.startswith("adapter")]
        print("note: no adapter given and none in production: base configurations only", file=sys.stderr)
    max_tokens = args.max_tokens or LifecycleSettings.load().gate_max_tokens
    try:
        results = evaluate_configs(configs, adapter, items, ood, serving, max_tokens, conversations)
    except ValueError as error:
        report(str(error))
        return EXIT_USAGE
    if args.save:
        Path(args.save).write_text(
            json.dumps(
                {
                    name: {
                        "declined": r["declined"],
                        "guard_fired": r["guard_fired"],
                        "seconds": r["seconds"],
                        "turns": [asdict(turn) for turn in r["turns"]],
                        **r["report"].to_dict(),
                    }
                    for name, r in results.items()
                },
                ensure_ascii=False,
                indent=2,
            ),
            encoding="utf-8",
        )
    turns = sum(len(conversation.turns) for conversation in conversations)
    print(
        f"{len(items)} {args.set} items ({sum(i.lang == 'en' for i in items)} EN, "
        f"{sum(i.lang == 'pt' for i in items)} PT), {len(ood)} out-of-domain probes, {len(conversations)} "
        f"conversations ({turns} turns); adapter {adapter or 'none'}; greedy, {max_tokens} tokens\n"
        f"{table(results)}"
    )
    return 0


def _adapter_folder(given: str | None, registry) -> Path | None:
    """--adapter as a registered version (v0003, 3) or a folder; without it, production's."""
    if not given:
        production = registry.production()
        return production.path if production else None
    if Path(given).expanduser().is_dir():
        return Path(given).expanduser()
    return registry.get(given).path


def _configure_evaluate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--adapter", help="registered version or adapter folder (default: production)")
    parser.add_argument(
        "--set",
        choices=SPLITS,
        default="heldout",
        help="dev (tune on it) or heldout (look once per design); default heldout",
    )
    parser.add_argument("--limit", type=int, help="a language-balanced subset of N items (and N/4 conversations)")
    parser.add_argument("--configs", help=f"comma-separated, default: {','.join(CONFIGS)}")
    parser.add_argument("--max-tokens", type=int, help="answer length cap (default GATE_MAX_TOKENS)")
    parser.add_argument("--save", metavar="FILE", help="also write the full reports, every answer, as JSON")
