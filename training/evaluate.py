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

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from data.scorer import EvalReport, contains, evaluate, is_decline, normalise
from data.seed import ANSWER, Conversation, EvalItem, OODItem
from inference.settings import InferenceSettings

CONFIGS = ("base", "base+retrieval", "base+retrieval+guard", "adapter", "adapter+retrieval",
           "adapter+retrieval+guard")
GUARD_SUFFIX = "+guard"
MIN_COPY_CHARS = 20  # an earlier answer this long found again inside a later one is a copy


@dataclass(frozen=True)
class Answer:
    text: str  # as generated, or the decline
    declined: bool  # grounding found nothing: the decline text was given without generating
    facts: tuple[int | None, ...]  # seed numbers of the facts in the prompt
    prompt: list[dict]  # the messages the model saw (or would have)
    guarded: str = ""  # what the bot sends: `text` after the faithfulness guard
    guard: str = "kept"  # the guard's verdict (inference.faithfulness)


def served_answers(model, tokenizer, questions: Sequence[str], serving: InferenceSettings, index,
                   *, grounded: bool, max_tokens: int,
                   previous: Sequence[str | None] | None = None) -> list[Answer]:
    """Greedy answers to questions, prompts built as the bot builds them (`previous[i]`: the
    question before questions[i] in its chat, for follow-ups).

    `grounded` False (or index None) is the model alone: the configured system prompt, no facts.
    """
    from mlx_lm.generate import batch_generate
    from mlx_lm.sample_utils import make_logits_processors

    from inference.faithfulness import guard
    from inference.grounding import build_grounded
    from inference.prompts import render_prompt

    settings = serving.model_copy(update={"grounding": grounded})

    def count_tokens(text: str) -> int:
        return len(tokenizer.encode(text))

    previous = previous or [None] * len(questions)
    groundings = [build_grounded([{"role": "user", "content": question}], index if grounded else None,
                                 settings, count_tokens, before)
                  for question, before in zip(questions, previous, strict=True)]
    todo = [i for i, grounding in enumerate(groundings) if grounding.decline is None]
    texts: dict[int, str] = {}
    if todo:
        prompts = [render_prompt(tokenizer, groundings[i].messages, serving.system_prompt) for i in todo]
        generated = batch_generate(model, tokenizer, prompts, max_tokens=max_tokens,
                                   logits_processors=make_logits_processors(
                                       repetition_penalty=serving.repetition_penalty)).texts
        texts = dict(zip(todo, generated, strict=True))
    answers = []
    for i, g in enumerate(groundings):
        if g.decline is not None:
            answers.append(Answer(g.decline, True, (), g.messages, g.decline))
            continue
        checked = guard(texts[i].strip(), [fact.text for fact in g.facts], g.messages[-1]["content"])
        answers.append(Answer(texts[i], False, tuple(fact.fact for fact in g.facts), g.messages,
                              checked.text, checked.verdict))
    return answers


def score(answers: dict[str, Answer], items: Sequence[EvalItem], ood: Sequence[OODItem], *,
          guarded: bool = False) -> EvalReport:
    """data.scorer's report over answers keyed by question (as generated, or as the guard sends them)."""
    return evaluate(lambda question, _lang: answers[question].guarded if guarded else answers[question].text,
                    list(items), list(ood))


@dataclass(frozen=True)
class TurnResult:
    conversation: str
    question: str
    expected: str  # ANSWER or DECLINE
    answer: str  # what the bot sends (after the guard)
    verdict: str  # right | declined | wrong (a decline turn is right when declined)
    copied: bool  # repeats an earlier answer of the same conversation


def conversation_results(model, tokenizer, conversations: Sequence[Conversation], serving: InferenceSettings,
                         index, *, max_tokens: int) -> list[TurnResult]:
    """Every turn of every conversation, answered as the bot answers it.

    The bot lets a follow-up lean on the previous question it answered from facts; what that is
    depends on retrieval only (a decline needs no model), so every turn's prompt is known up front
    and the turns are generated in one batch.
    """
    from inference.grounding import build_grounded

    questions, previous = [], []
    for conversation in conversations:
        before = None
        for turn in conversation.turns:
            questions.append(turn.question)
            previous.append(before)
            grounding = build_grounded([{"role": "user", "content": turn.question}], index, serving,
                                       previous_question=before)
            before = turn.question if grounding.decline is None else before
    answers = iter(served_answers(model, tokenizer, questions, serving, index, grounded=True,
                                  max_tokens=max_tokens, previous=previous))
    results = []
    for conversation in conversations:
        earlier: list[str] = []
        for turn in conversation.turns:
            text = next(answers).guarded
            if turn.expected == ANSWER:
                right = all(any(contains(text, phrase) for phrase in group) for group in turn.key_facts)
                verdict = "right" if right else "declined" if is_decline(text) else "wrong"
            else:
                verdict = "right" if is_decline(text) else "wrong"
            said = normalise(text)
            copied = any(said == before or (len(before) >= MIN_COPY_CHARS and before in said)
                         for before in earlier)
            earlier.append(said)
            results.append(TurnResult(conversation.id, turn.question, turn.expected, text, verdict, copied))
    return results


def evaluate_configs(configs: Sequence[str], adapter: Path | None, items: Sequence[EvalItem],
                     ood: Sequence[OODItem], serving: InferenceSettings, max_tokens: int,
                     conversations: Sequence[Conversation] = ()) -> dict[str, dict]:
    """{config: {"report": EvalReport, "declined": n, "guard_fired": n, "turns": [TurnResult],
    "seconds": s}} on one base-model load. A "+guard" configuration scores the answers its
    retrieval configuration generated, as the guard passes them on: one generation serves both."""
    from inference.adapters import read_adapter
    from inference.faithfulness import KEPT
    from inference.grounding import FactIndex
    from inference.loading import load_base
    from inference.lora import apply_adapter, remove_adapter

    unknown = [name for name in configs if name not in CONFIGS]
    if unknown:
        raise ValueError(f"unknown configuration(s) {', '.join(unknown)}; choose from {', '.join(CONFIGS)}")
    if adapter is None and any(name.startswith("adapter") for name in configs):
        raise ValueError("the adapter configurations need an adapter: --adapter VERSION|PATH, or a production one")
    model, tokenizer, _info = load_base(serving.model_path, serving.models_root, serving.device,
                                        serving.cpu_dtype)
    index = FactIndex(serving.database_file, serving.retrieval_min_score)
    questions = [item.question for item in items] + [probe.question for probe in ood]
    results = {}
    try:
        for generated in dict.fromkeys(name.removesuffix(GUARD_SUFFIX) for name in configs):
            started = time.perf_counter()
            remove_adapter(model)
            if generated.startswith("adapter"):
                apply_adapter(model, read_adapter(adapter, str(adapter)))
            model.eval()
            grounded = generated.endswith("retrieval")
            answers = served_answers(model, tokenizer, questions, serving, index, grounded=grounded,
                                     max_tokens=max_tokens)
            turns = conversation_results(model, tokenizer, conversations, serving, index,
                                         max_tokens=max_tokens) if grounded else []
            by_question = dict(zip(questions, answers, strict=True))
            seconds = round(time.perf_counter() - started, 1)
            for guarded in (False, True):
                name = generated + (GUARD_SUFFIX if guarded else "")
                if name in configs:
                    results[name] = {"report": score(by_question, items, ood, guarded=guarded),
                                     "declined": sum(answer.declined for answer in answers[: len(items)]),
                                     "guard_fired": sum(answer.guard != KEPT for answer in answers)
                                     if guarded else None,
                                     "turns": turns if guarded else [], "seconds": seconds}
    finally:
        remove_adapter(model)
        index.close()
    return {name: results[name] for name in configs}


def table(results: dict[str, dict]) -> str:
    """One row per configuration: right / declined / wrong per language, out-of-domain declines,
    how often the guard replaced an answer, and the conversations' turns."""
    header = (f"{'configuration':<25}{'EN r/d/w':>17}{'PT r/d/w':>17}{'right':>7}{'wrong':>7}{'OOD decl':>9}"
              f"{'guard':>6}{'turns r/d/w':>18}{'copies':>7}{'secs':>6}")
    rows = [header, "-" * len(header)]
    for name, result in results.items():
        report = result["report"]
        turns = result["turns"]
        rows.append(f"{name:<25}{_shares(report.verdicts('en')):>17}{_shares(report.verdicts('pt')):>17}"
                    f"{_pct(report.accuracy):>7}{_pct(report.wrong_rate):>7}{_pct(report.ood_decline_rate):>9}"
                    f"{'-' if result['guard_fired'] is None else result['guard_fired']:>6}"
                    f"{_turn_shares(turns) if turns else '-':>18}"
                    f"{sum(turn.copied for turn in turns) if turns else '-':>7}{result['seconds']:>6.0f}")
    return "\n".join(rows)


def _shares(verdicts: dict[str, float | None]) -> str:
    return "/".join(f"{100 * value:.0f}" if value is not None else "-" for value in verdicts.values())


def _turn_shares(turns: list[TurnResult]) -> str:
    return "/".join(f"{100 * sum(t.verdict == v for t in turns) / len(turns):.0f}"
                    for v in ("right", "declined", "wrong"))


def _pct(value) -> str:
    return f"{value:.1%}" if isinstance(value, (int, float)) else "n/a"
