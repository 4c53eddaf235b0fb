"""What the training pipeline tells the admins, in English and European Portuguese.

The pipeline reports in notes (a key and its values) rather than sentences: the bot shows them in
each admin's language, `python -m training pipeline` and the logs in English. They live here and not
with the bot's own texts (bot/texts.py, the same pattern) because training never imports the bot.
One table keeps both languages side by side, so a note cannot be added in only one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

NOTES: dict[str, dict[str, str]] = {
    "cannot_start": {
        "en": "The pipeline cannot start: {error}",
        "pt": "O treino não pode começar: {error}",
    },
    "busy": {
        "en": "A pipeline is already running (pid {pid}, since {since}, stage {stage}, {trigger} by {by}).",
        "pt": "Já está a decorrer um treino (pid {pid}, desde {since}, etapa {stage}, {trigger} por {by}).",
    },
    "crashed": {
        "en": "Pipeline error: {error}. Production unchanged.",
        "pt": "Erro no treino: {error}. A produção não mudou.",
    },
    "unchanged": {"en": "Production unchanged: {version}.", "pt": "A produção não mudou: {version}."},
    "base_model": {"en": "base model", "pt": "modelo base"},
    "grounding_failed": {
        "en": "Grounding the dataset failed: {error}.",
        "pt": "Juntar os factos ao conjunto de treino falhou: {error}.",
    },
    "skipped_production": {
        "en": "Skipped: the data has not changed (production {version} was trained on dataset {dataset}).",
        "pt": "Dispensado: os dados não mudaram (o adaptador em produção, {version}, foi treinado no "
        "conjunto {dataset}).",
    },
    "skipped_rejected": {
        "en": "Skipped: the data has not changed ({version} was trained on dataset {dataset} and rejected).",
        "pt": "Dispensado: os dados não mudaram ({version} foi treinado no conjunto {dataset} e rejeitado).",
    },
    "nothing_new": {
        "en": "Skipped: nothing new to learn (no 👍 or correction newer than the data {version} was trained on: "
        "{until}). RETRAIN_MODE=full or `python -m training pipeline --full` trains from scratch.",
        "pt": "Dispensado: nada de novo para aprender (nenhum 👍 nem correção mais recente do que os dados com que "
        "{version} foi treinado: {until}). RETRAIN_MODE=full ou `python -m training pipeline --full` treina de raiz.",
    },
    "seed_only": {"en": "the seed alone", "pt": "apenas o corpus de base"},
    "warm_start": {
        "en": "Warm start from {version}: {new} new examples + {replay} replayed, {steps} steps.",
        "pt": "Continuação de {version}: {new} exemplos novos + {replay} repetidos, {steps} passos.",
    },
    "full_training": {"en": "Full training ({reason}).", "pt": "Treino de raiz ({reason})."},
    "reason_no_production": {
        "en": "no production adapter to continue",
        "pt": "não há adaptador em produção para continuar",
    },
    "reason_no_basis": {
        "en": "{version} records no training basis (registered before warm starts)",
        "pt": "{version} não regista a base do seu treino (registado antes das continuações)",
    },
    "reason_basis_changed": {
        "en": "{parts} changed since {version} was trained",
        "pt": "mudou desde o treino de {version}: {parts}",
    },
    "reason_asked": {"en": "a full run was asked for", "pt": "foi pedido um treino de raiz"},
    "reason_setting": {"en": "RETRAIN_MODE=full is set", "pt": "RETRAIN_MODE=full está definido"},
    "reason_same_basis": {
        "en": "continuing {version}, trained on the same basis",
        "pt": "continua {version}, treinado sobre a mesma base",
    },
    "reason_full_refused": {
        "en": "continuing {version}: the gate refused a full run on the current basis ({refused})",
        "pt": "continua {version}: a avaliação recusou um treino de raiz sobre a base atual ({refused})",
    },
    "reason_unrecorded": {
        "en": "resumed run {run}, whose plan was not recorded",
        "pt": "treino {run} retomado, cujo plano não ficou registado",
    },
    "training_unknown": {"en": "Training: {reason}.", "pt": "Treino: {reason}."},
    "basis_base_model": {"en": "base model", "pt": "modelo base"},
    "basis_lora": {"en": "LoRA layout", "pt": "configuração LoRA"},
    "basis_dataset_format": {"en": "dataset format", "pt": "formato do conjunto de treino"},
    "basis_grounding": {"en": "grounding (format or settings)", "pt": "junção dos factos (formato ou definições)"},
    "basis_seed": {"en": "seed corpus", "pt": "corpus de base"},
    "basis_shipped_knowledge": {
        "en": "knowledge base release (seed facts or lexicon)",
        "pt": "versão da base de conhecimento (factos de base ou léxico)",
    },
    "list": {"en": "{first}, {rest}", "pt": "{first}, {rest}"},
    "training_failed": {"en": "Training failed: {error}.", "pt": "O treino falhou: {error}."},
    "not_registered": {
        "en": "The trained adapter was not registered: {error}.",
        "pt": "O adaptador treinado não foi registado: {error}.",
    },
    "gate_failed": {
        "en": "The gate failed on {version}: {error}.",
        "pt": "A avaliação de {version} falhou: {error}.",
    },
    "trained_on": {
        "en": "Run {run}: {steps} steps, best val loss {loss}; dataset {train} train / {valid} valid examples.",
        "pt": "Treino {run}: {steps} passos, melhor perda de validação {loss}; conjunto de {train} exemplos "
        "de treino / {valid} de validação.",
    },
    "rejected": {
        "en": "Candidate {version} rejected ({trigger}, by {by}).",
        "pt": "Candidato {version} rejeitado ({trigger}, por {by}).",
    },
    "criterion": {
        "en": "{mark} {name}: {candidate} vs {champion}; needs {rule}",
        "pt": "{mark} {name}: {candidate} vs {champion}; requer {rule}",
    },
    "production_changed": {
        "en": "{version} beat {champion}, but production changed to {current} meanwhile; not promoted "
        "(gate it again: python -m training gate {version}).",
        "pt": "{version} superou {champion}, mas entretanto a produção mudou para {current}; não foi "
        "promovido (avalie-o de novo: python -m training gate {version}).",
    },
    "promoted": {
        "en": "Promoted {version} over {champion} ({trigger}, by {by}).",
        "pt": "{version} promovido, no lugar de {champion} ({trigger}, por {by}).",
    },
    "hot_swap_failed": {
        "en": "Hot swap failed ({error}); serving it needs a restart.",
        "pt": "A troca a quente falhou ({error}); para o servir é preciso reiniciar o bot.",
    },
}


@dataclass(frozen=True)
class Note:
    """One line of a report: a key of NOTES and its values (numbers and identifiers, shown as they
    are in every language, or notes of their own, shown in the same language)."""

    key: str
    values: dict = field(default_factory=dict)

    def text(self, lang: str) -> str:
        return NOTES[self.key][lang].format(
            **{name: value.text(lang) if isinstance(value, Note) else value for name, value in self.values.items()}
        )

    def to_dict(self) -> dict:
        return {
            "key": self.key,
            "values": {
                name: value.to_dict() if isinstance(value, Note) else value for name, value in self.values.items()
            },
        }

    @classmethod
    def from_dict(cls, data: dict) -> Note:
        """The inverse of to_dict (a note as pipeline_last.json keeps it)."""
        return cls(
            data["key"],
            {
                name: cls.from_dict(value) if isinstance(value, dict) else value
                for name, value in data["values"].items()
            },
        )


def listed(notes: list[Note]) -> Note:
    """Notes as one, comma-separated, in the reader's language."""
    return notes[0] if len(notes) == 1 else Note("list", {"first": notes[0], "rest": listed(notes[1:])})


def version_or_base(version: str | None) -> str | Note:
    """An adapter version, or the base model (words, so in the reader's language)."""
    return version if version else Note("base_model")
