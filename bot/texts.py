"""Everything the bot says to users, in English and European Portuguese: fans' texts (TEXTS) and
admins' (ADMIN_TEXTS), each in the user's Telegram language; the training pipeline's own report
lines come from training/lifecycle/messages.py, in the same language.

One table keeps both languages side by side, so a new message cannot be added in only one.
Numbers and identifiers (versions, ids, commands, setting names) read the same in both.
"""

from __future__ import annotations

from collections.abc import Callable

Notice = Callable[[str], str]  # a message for the admins, put in words in the language it is given

HELP = {
    "en": (
        "Hi! I answer questions about SC Farense, the football club of Faro — its history, "
        "stadium, players and titles. Just write your question (in a group, mention me or "
        "reply to one of my messages).\n\n"
        "Privacy: I store your questions, my answers and your 👍/👎 votes, with your Telegram "
        "id, name and language, to improve the bot. Only curated examples — answers you rated "
        "👍 and answers corrected by the admins — are used to retrain the model; nothing is "
        "shared with anyone. /forget deletes it all at once, from the training data too; backups "
        "still holding it are deleted within {backup_days} days, and a restored backup forgets you "
        "again. What /forget keeps: that you opted out (if you did), and the record of refused "
        "admin commands (your id, the command's name and when, no text).\n\n"
        "Commands:\n"
        "/help — this message\n"
        "/reset — forget our recent conversation (start a new topic)\n"
        "/forget — delete everything stored about you\n"
        "/optout — keep your conversations out of training\n"
        "/optin — allow them again\n\n"
        "Answers come from a small language model reading the facts I know about the club; the "
        "last line names the source of the fact used. When I know nothing about a question I say "
        "so. Answers can still be wrong — tap 👎 and the admins will see it. Força Farense! 🦁"
    ),
    "pt": (
        "Olá! Respondo a perguntas sobre o SC Farense, o clube de futebol de Faro — a sua "
        "história, o estádio, os jogadores e os títulos. Escreva a sua pergunta (num grupo, "
        "mencione-me ou responda a uma das minhas mensagens).\n\n"
        "Privacidade: guardo as suas perguntas, as minhas respostas e os seus votos 👍/👎, com o "
        "seu id do Telegram, nome e idioma, para melhorar o bot. Só exemplos selecionados — "
        "respostas que votou 👍 e respostas corrigidas pelos administradores — são usados para "
        "treinar de novo o modelo; nada é partilhado com ninguém. /forget apaga tudo de uma vez, "
        "também dos dados de treino; as cópias de segurança que ainda o tenham são apagadas em "
        "{backup_days} dias, e uma cópia reposta volta a esquecê-lo. O que /forget guarda: que "
        "pediu /optout (se pediu), e o registo de comandos de administração recusados (o seu id, o "
        "nome do comando e quando, sem texto).\n\n"
        "Comandos:\n"
        "/help — esta mensagem\n"
        "/reset — esquecer a conversa recente (mudar de assunto)\n"
        "/forget — apagar tudo o que está guardado sobre si\n"
        "/optout — excluir as suas conversas do treino\n"
        "/optin — voltar a permiti-las\n\n"
        "As respostas vêm de um modelo de linguagem pequeno que lê os factos que conheço sobre o "
        "clube; a última linha indica a fonte do facto usado. Quando não sei nada sobre uma "
        "pergunta, digo-o. As respostas podem ter erros — carregue em 👎 e os administradores "
        "verão. Força Farense! 🦁"
    ),
}

TEXTS: dict[str, dict[str, str]] = {
    "reset": {"en": "Done — I forgot our recent conversation.", "pt": "Feito — esqueci a nossa conversa recente."},
    "forgot": {
        "en": "Deleted everything stored about you: {details}.",
        "pt": "Apaguei tudo o que estava guardado sobre si: {details}.",
    },
    "forgot_nothing": {"en": "There was nothing stored about you.", "pt": "Não havia nada guardado sobre si."},
    "optout": {
        "en": "OK — your conversations will not be used for training. /optin undoes this.",
        "pt": "OK — as suas conversas não serão usadas no treino. /optin anula isto.",
    },
    "optin": {
        "en": "Thanks — your rated conversations may now help train the bot.",
        "pt": "Obrigado — as suas conversas avaliadas podem agora ajudar a treinar o bot.",
    },
    "too_long": {
        "en": "That message is too long for me ({length} characters; the limit is {limit}). "
        "Please ask a shorter question.",
        "pt": "Essa mensagem é demasiado longa ({length} caracteres; o limite é {limit}). "
        "Faça uma pergunta mais curta, por favor.",
    },
    "rate_limited": {
        "en": "You're asking faster than I can answer — please wait a minute and try again.",
        "pt": "Está a perguntar mais depressa do que consigo responder — espere um minuto e tente de novo.",
    },
    "non_text": {
        "en": "I can only read text messages — please write your question.",
        "pt": "Só consigo ler mensagens de texto — escreva a sua pergunta, por favor.",
    },
    "failed": {
        "en": "Sorry, something went wrong while answering. Please try again in a moment.",
        "pt": "Desculpe, algo correu mal ao responder. Tente de novo daqui a pouco.",
    },
    "empty_answer": {"en": "(I have no answer to that.)", "pt": "(Não tenho resposta para isso.)"},
    "vote_thanks": {"en": "Thanks for the feedback!", "pt": "Obrigado pela avaliação!"},
    "vote_refused": {
        "en": "Only the person who asked can rate this answer.",
        "pt": "Só quem fez a pergunta pode avaliar esta resposta.",
    },
}

ADMIN_TEXTS: dict[str, dict[str, str]] = {
    "not_admin": {
        "en": "Sorry, that command is only for the bot's administrators.",
        "pt": "Desculpe, esse comando é só para os administradores do bot.",
    },
    "admin_private_only": {
        "en": "Admin commands work only in a private chat with me: https://t.me/{username}",
        "pt": "Os comandos de administração só funcionam numa conversa privada comigo: https://t.me/{username}",
    },
    "fact_unknown": {"en": "There is no fact #{id} (see /facts).", "pt": "Não há nenhum facto #{id} (ver /facts)."},
    "fact_history": {
        "en": "Fact #{id}, revision {revision} now{removed} (/facts restore {id} <revision> puts older words back):",
        "pt": "Facto #{id}, agora na revisão {revision}{removed} (/facts restore {id} <revisão> "
        "repõe palavras anteriores):",
    },
    "fact_removed": {"en": ", removed from the answers", "pt": ", tirado das respostas"},
    "fact_no_revision": {
        "en": "Fact #{id} has no revision {revision} (/facts history {id} lists them).",
        "pt": "O facto #{id} não tem revisão {revision} (/facts history {id} lista-as).",
    },
    "fact_restored": {
        "en": "Fact #{id} has the words of revision {revision} again, as revision {new}: {text}",
        "pt": "O facto #{id} tem de novo as palavras da revisão {revision}, como revisão {new}: {text}",
    },
    "adapter_refused": {
        "en": "⚠️ Adapter refused: {reason}. /status shows what serves; /rollback <version> serves a good one.",
        "pt": "⚠️ Adaptador recusado: {reason}. /status mostra o que está a servir; /rollback <versão> serve um bom.",
    },
    "retrain_usage": {
        "en": "/retrain continues the adapter in production on what is new; /retrain full trains from scratch.",
        "pt": "/retrain continua o adaptador em produção com o que é novo; /retrain full treina de raiz.",
    },
    "correct_usage": {
        "en": "Reply to one of my answers with /correct <the right answer>.",
        "pt": "Responda a uma das minhas respostas com /correct <a resposta certa>.",
    },
    "admin_help": {
        "en": "Admin commands:\n"
        "/status — model, adapter, training, 👎 of the week, knowledge base\n"
        "/retrain — train on what is new and evaluate now (/retrain full: from scratch); "
        "/rollback — serve the previous adapter "
        "(/rollback <version>: that one)\n"
        "/correct <better answer> — as a reply to an answer: kept for training and put in the "
        "knowledge base at once (amends the fact the answer used, or adds one)\n"
        "/facts — the newest facts; /facts <words> — search them\n"
        "/facts history <id> — a fact's revisions; /facts restore <id> <revision> — put one back\n"
        "/fact_remove <id> — take a fact out of the answers",
        "pt": "Comandos de administração:\n"
        "/status — modelo, adaptador, treino, 👎 da semana, base de conhecimento\n"
        "/retrain — treinar com o que é novo e avaliar já (/retrain full: de raiz); "
        "/rollback — voltar ao adaptador anterior "
        "(/rollback <versão>: a essa)\n"
        "/correct <resposta melhor> — em resposta a uma resposta: guardada para o treino e "
        "posta já na base de conhecimento (corrige o facto que a resposta usou, ou junta um)\n"
        "/facts — os factos mais recentes; /facts <palavras> — procurá-los\n"
        "/facts history <id> — as revisões de um facto; /facts restore <id> <revisão> — repor uma\n"
        "/fact_remove <id> — tirar um facto das respostas",
    },
    "status_model": {"en": "Model: {model}", "pt": "Modelo: {model}"},
    "status_served": {"en": "Adapter served: {adapter}", "pt": "Adaptador a servir: {adapter}"},
    "status_production": {"en": "Adapter in production: {adapter}", "pt": "Adaptador em produção: {adapter}"},
    "status_last_training": {"en": "Last training: {last}", "pt": "Último treino: {last}"},
    "status_next_nightly": {"en": "Next nightly training: {when}", "pt": "Próximo treino noturno: {when}"},
    "status_conversations": {
        "en": "Conversations: answers {messages} · 👍 {up} · 👎 {down} · corrections {corrections} · "
        "users {users} (opted out {opted_out}) · chats {chats}",
        "pt": "Atividade: respostas {messages} · 👍 {up} · 👎 {down} · correções {corrections} · "
        "utilizadores {users} (com /optout {opted_out}) · conversas {chats}",
    },
    "status_thumbs_down": {"en": "Thumbs down ({days} days): {count}", "pt": "👎 ({days} dias): {count}"},
    "status_thumbs_down_latest": {
        "en": 'Thumbs down ({days} days): {count} — latest: "{question}" → "{answer}"',
        "pt": '👎 ({days} dias): {count} — o último: "{question}" → "{answer}"',
    },
    "status_knowledge": {
        "en": "Knowledge base: {live} facts ({admin} from admins, {removed} removed); grounding {grounding}",
        "pt": "Base de conhecimento: {live} factos ({admin} dos administradores, {removed} tirados); "
        "grounding {grounding}",
    },
    "grounding_on": {"en": "on", "pt": "ligado"},
    "grounding_off": {"en": "off (GROUNDING=false)", "pt": "desligado (GROUNDING=false)"},
    "status_dataset": {"en": "Dataset: {dataset}", "pt": "Conjunto de treino: {dataset}"},
    "dataset_none": {"en": "none built yet", "pt": "nenhum construído ainda"},
    "dataset_built": {"en": "{name}: {splits} (sources: {sources})", "pt": "{name}: {splits} (fontes: {sources})"},
    "dataset_unreadable": {
        "en": "{name} (unreadable manifest: {error})",
        "pt": "{name} (manifesto ilegível: {error})",
    },
    "status_memory": {
        "en": "Memory: process {rss} MiB RSS, {available} GiB available",
        "pt": "Memória: processo {rss} MiB RSS, {available} GiB disponíveis",
    },
    "status_disk": {"en": "Disk: {disk}", "pt": "Disco: {disk}"},
    "status_uptime": {"en": "Uptime: {uptime}", "pt": "Ligado há: {uptime}"},
    "status_queue": {"en": "Queue: {waiting} waiting for the model", "pt": "Fila: {waiting} à espera do modelo"},
    "status_queue_training": {"en": "; a training run is in progress", "pt": "; está a decorrer um treino"},
    "status_no_plot": {
        "en": "Loss plot: no training run yet.",
        "pt": "Gráfico da perda: ainda não houve nenhum treino.",
    },
    "status_no_accuracy_plot": {
        "en": "Accuracy plot: no adapter version has gate figures yet.",
        "pt": "Gráfico da exatidão: nenhuma versão do adaptador tem ainda resultados da avaliação.",
    },
    "no_adapter": {"en": "none (base model)", "pt": "nenhum (modelo base)"},
    "production_unreadable": {"en": "unreadable ({error})", "pt": "ilegível ({error})"},
    "production_since": {"en": "{version}, promoted {when}", "pt": "{version}, promovido em {when}"},
    "training_running": {
        "en": "running now (stage {stage}, since {since}); ",
        "pt": "a decorrer (etapa {stage}, desde {since}); ",
    },
    "training_none": {"en": "none yet", "pt": "nenhum ainda"},
    "training_finished": {
        "en": "{outcome}{version} ({trigger}, finished {when})",
        "pt": "{outcome}{version} ({trigger}, terminado em {when})",
    },
    "not_scheduled": {"en": "not scheduled", "pt": "não agendado"},
    "loss_caption": {"en": "Loss of training run {run}", "pt": "Perda do treino {run}"},
    "accuracy_caption": {
        "en": "Gate answers per adapter version: right and wrong shares by language",
        "pt": "Respostas da avaliação por versão do adaptador: certas e erradas por língua",
    },
    "retraining": {"en": "Retraining…", "pt": "A treinar de novo…"},
    "retrain_result": {"en": "Retraining: {outcome}\n{details}", "pt": "Novo treino: {outcome}\n{details}"},
    "busy": {
        "en": "A training run is already in progress — try again when it has finished.",
        "pt": "Já está a decorrer um treino — tente de novo quando terminar.",
    },
    "training_crashed": {"en": "Training failed: {error}", "pt": "O treino falhou: {error}"},
    "progress_stage": {"en": "Stage: {stage}", "pt": "Etapa: {stage}"},
    "progress_step": {"en": "step {step}/{total}", "pt": "passo {step}/{total}"},
    "progress_loss": {"en": "loss {loss}", "pt": "perda {loss}"},
    "progress_val_loss": {"en": "val {loss}", "pt": "validação {loss}"},
    "progress_eta": {"en": "ETA {eta}", "pt": "faltam {eta}"},
    "nightly_report": {
        "en": "Nightly retraining ({night}): {outcome}\n{details}",
        "pt": "Treino noturno ({night}): {outcome}\n{details}",
    },
    "nightly_busy_all_night": {
        "en": "Nightly retraining ({night}): another run kept it busy all night; the next night will train.",
        "pt": "Treino noturno ({night}): outro treino ocupou a noite toda; o treino fica para a próxima noite.",
    },
    "first_training": {
        "en": "No trained adapter for this base model yet: training the first one now (about an hour on a "
        "2-core server). Answers come from the base model with retrieved facts until then.",
        "pt": "Ainda não há nenhum adaptador treinado para este modelo base: a treinar o primeiro agora (cerca "
        "de uma hora num servidor de 2 núcleos). Até lá, as respostas vêm do modelo base com os factos "
        "encontrados.",
    },
    "first_training_result": {
        "en": "First adapter: {outcome}\n{details}",
        "pt": "Primeiro adaptador: {outcome}\n{details}",
    },
    "backup_made": {"en": "Backup: {name} ({summary})", "pt": "Cópia de segurança: {name} ({summary})"},
    "backup_failed": {"en": "Backup failed: {error}", "pt": "A cópia de segurança falhou: {error}"},
    "retention_done": {
        "en": "Retention: deleted {deleted}{rotated}; {freed} MB freed.\nDisk use: {disk}",
        "pt": "Limpeza — apagado: {deleted}{rotated}; {freed} MB libertados.\nUso do disco: {disk}",
    },
    "retention_nothing": {"en": "nothing", "pt": "nada"},
    "retention_rotated": {"en": "; service.log rotated", "pt": "; service.log rodado"},
    "retention_failed": {"en": "Retention failed: {error}", "pt": "A limpeza falhou: {error}"},
    "rollback_not_a_version": {
        "en": "Rollback failed: {shown} is not a version (expected e.g. v0003 or 3)",
        "pt": "Não foi possível voltar atrás: {shown} não é uma versão (por exemplo v0003 ou 3)",
    },
    "rollback_failed": {"en": "Rollback failed: {error}", "pt": "Não foi possível voltar atrás: {error}"},
    "rolled_back": {
        "en": "Rolled back. Now serving: {adapter}",
        "pt": "De volta a um adaptador anterior. Agora a servir: {adapter}",
    },
    "serving_base": {"en": "the base model (no adapter)", "pt": "o modelo base (sem adaptador)"},
    "correction_not_saved": {"en": "Correction not saved: {error}", "pt": "Correção não guardada: {error}"},
    "correction_saved": {
        "en": "Correction saved — it will be used in the next training run.",
        "pt": "Correção guardada — será usada no próximo treino.",
    },
    "fact_amended": {
        "en": "Fact #{id} amended (revision {revision}) in the knowledge base",
        "pt": "Facto #{id} corrigido (revisão {revision}) na base de conhecimento",
    },
    "fact_added": {
        "en": "Fact #{id} added in the knowledge base",
        "pt": "Facto #{id} acrescentado à base de conhecimento",
    },
    "fact_kept": {
        "en": " (the answer quoted fact {ids}, about something else: it is kept; /fact_remove it if it is wrong)",
        "pt": " (a resposta citou o facto {ids}, sobre outra coisa: foi mantido; use /fact_remove se estiver errado)",
    },
    "learned_grounding_off": {
        "en": "{done} (grounding is off: answers do not use it).",
        "pt": "{done} (grounding desligado: as respostas não o usam).",
    },
    "learned": {"en": "{done}{lead} — {found}", "pt": "{done}{lead} — {found}"},
    "learned_lead": {
        "en": ", led by telling words of the question (revision {revision})",
        "pt": ", antecedido das palavras-chave da pergunta (revisão {revision})",
    },
    "learned_found": {
        "en": "the next answer to that question uses it.",
        "pt": "a próxima resposta a essa pergunta usa-o.",
    },
    "learned_not_found": {
        "en": "but that question still does not retrieve it; /facts shows it.",
        "pt": "mas essa pergunta ainda não o encontra; /facts mostra-o.",
    },
    "not_learned": {
        "en": "Not put in the knowledge base: {error}",
        "pt": "Não foi posto na base de conhecimento: {error}",
    },
    "facts_none_match": {
        "en": "No fact holds all of: {query}",
        "pt": "Nenhum facto tem todas estas palavras: {query}",
    },
    "facts_matching": {"en": "Facts with {query}{best}:", "pt": "Factos com {query}{best}:"},
    "facts_best": {"en": " (the best {count})", "pt": " (os {count} melhores)"},
    "facts_empty": {"en": "The knowledge base is empty.", "pt": "A base de conhecimento está vazia."},
    "facts_newest": {
        "en": "Newest of {live} facts (/facts <words> searches, /fact_remove <id> removes, "
        "/facts history <id> shows the revisions):",
        "pt": "Os mais recentes de {live} factos (/facts <palavras> procura, /fact_remove <id> tira, "
        "/facts history <id> mostra as revisões):",
    },
    "fact_by": {"en": ", by {author}", "pt": ", por {author}"},
    "fact_from_message": {"en": ", from message {id}", "pt": ", da mensagem {id}"},
    "revision_by_admin": {"en": "admin {id}", "pt": "administrador {id}"},
    "revision_by_seed": {"en": "seed", "pt": "inicial"},
    "revision_correcting": {"en": ", correcting message {id}", "pt": ", a corrigir a mensagem {id}"},
    "fact_remove_usage": {
        "en": "Usage: /fact_remove <id> — the number /facts shows after #.",
        "pt": "Uso: /fact_remove <id> — o número que /facts mostra depois de #.",
    },
    "fact_remove_unknown": {
        "en": "There is no fact #{id} to remove (see /facts).",
        "pt": "Não há nenhum facto #{id} para tirar (ver /facts).",
    },
    "fact_removed_now": {"en": "Removed fact #{id}: {text}", "pt": "Facto #{id} tirado: {text}"},
}

# How the bot names a pipeline's outcome and stages (identifiers in the pipeline and the logs).
OUTCOMES = {
    "en": {outcome: outcome for outcome in ("promoted", "rejected", "skipped", "failed", "busy")},
    "pt": {
        "promoted": "promovido",
        "rejected": "rejeitado",
        "skipped": "dispensado",
        "failed": "falhou",
        "busy": "ocupado",
    },
}
STAGES = {
    "en": {stage: stage for stage in ("starting", "dataset", "ground", "train", "register", "gate", "promote")},
    "pt": {
        "starting": "a começar",
        "dataset": "conjunto de treino",
        "ground": "juntar os factos",
        "train": "treino",
        "register": "registo",
        "gate": "avaliação",
        "promote": "promoção",
    },
}
# What the nightly retention names what it deleted (bot/retention.py's kinds).
RETAINED_KINDS = {
    "en": {
        "runs": "runs",
        "checkpoint folders": "checkpoint folders",
        "datasets": "datasets",
        "grounded copies": "grounded copies",
        "backups": "backups",
    },
    "pt": {
        "runs": "treinos",
        "checkpoint folders": "pastas de checkpoints",
        "datasets": "conjuntos de treino",
        "grounded copies": "cópias com factos",
        "backups": "cópias de segurança",
    },
}

PUBLIC_COMMANDS = {
    "en": [
        ("help", "What I do, privacy and commands"),
        ("reset", "Forget our recent conversation"),
        ("forget", "Delete everything stored about you"),
        ("optout", "Keep your chats out of training"),
        ("optin", "Allow your chats in training again"),
    ],
    "pt": [
        ("help", "O que faço, privacidade e comandos"),
        ("reset", "Esquecer a conversa recente"),
        ("forget", "Apagar tudo o que está guardado sobre si"),
        ("optout", "Excluir as suas conversas do treino"),
        ("optin", "Voltar a permitir o treino"),
    ],
}
ADMIN_COMMANDS = {
    "en": [
        ("status", "Model, adapter, training, data, memory"),
        ("retrain", "Train and evaluate now"),
        ("rollback", "Serve the previous adapter"),
        ("correct", "Reply to an answer: store a better one"),
        ("facts", "List or search the knowledge base"),
        ("fact_remove", "Remove a fact by its id"),
    ],
    "pt": [
        ("status", "Modelo, adaptador, treino, dados, memória"),
        ("retrain", "Treinar e avaliar já"),
        ("rollback", "Voltar ao adaptador anterior"),
        ("correct", "Em resposta: guardar uma resposta melhor"),
        ("facts", "Listar ou procurar na base de conhecimento"),
        ("fact_remove", "Tirar um facto pelo id"),
    ],
}


def language(code: str | None) -> str:
    """Portuguese for any pt-* Telegram language code, English otherwise."""
    return "pt" if (code or "").lower().startswith("pt") else "en"


def text(key: str, lang: str, **values: object) -> str:
    """A message in `lang`; "help" needs `backup_days` (the privacy notice states the backup window)."""
    table = HELP if key == "help" else ADMIN_TEXTS[key] if key in ADMIN_TEXTS else TEXTS[key]
    return table[lang].format(**values)


def notice(key: str, **values: object) -> Notice:
    """A message for the admins, in the language each one is sent it in."""
    return lambda lang: text(key, lang, **values)


def named(table: dict[str, dict[str, str]], name: str, lang: str) -> str:
    """`name` (an outcome, a stage, a kind) in `lang`, or as it is when the table does not know it."""
    return table[lang].get(name, name)


# How /forget names what it deleted (the store's counts keys).
DELETED_KINDS = {
    "en": {
        "messages": "questions and answers",
        "feedback": "votes",
        "corrections": "corrections",
        "chats": "chat records",
        "users": "profile",
        "datasets": "training datasets",
    },
    "pt": {
        "messages": "perguntas e respostas",
        "feedback": "votos",
        "corrections": "correções",
        "chats": "registos de conversa",
        "users": "perfil",
        "datasets": "conjuntos de treino",
    },
}


def deleted_summary(counts: dict[str, int], lang: str) -> str:
    names = DELETED_KINDS[lang]
    return ", ".join(f"{names.get(kind, kind)}: {count}" for kind, count in counts.items() if count)
