"""Everything the bot says to users, in English and European Portuguese.

One table keeps both languages side by side, so a new message cannot be added in only one.
"""

from __future__ import annotations

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
    return (HELP if key == "help" else TEXTS[key])[lang].format(**values)


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
