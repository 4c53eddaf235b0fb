"""Scrubbing: personal data is replaced, football facts are left exactly as they were."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from data.privacy import scrub, scrub_counted

PERSONAL = [
    ("write to joao.silva+farense@mail.example.pt please", "write to [email] please"),
    ("E-mail: Ana_Sousa@sapo.pt.", "E-mail: [email]."),
    ("ligue 912 345 678", "ligue [phone]"),
    ("ligue 912345678", "ligue [phone]"),
    ("tlm 96-123-4567", "tlm [phone]"),
    ("tlm 961 23 45 67", "tlm [phone]"),
    ("desde 1990 o 912 345 678 é meu", "desde 1990 o [phone] é meu"),
    ("+351 912.345.678", "[phone]"),
    ("o meu número é +351 912 345 678.", "o meu número é [phone]."),
    ("(+351) 912-345-678", "[phone]"),
    ("00351912345678", "[phone]"),
    ("00351 289 123 456", "[phone]"),
    ("fixo 289 123 456 em Faro", "fixo [phone] em Faro"),
    ("Lisboa 21 234 5678", "Lisboa [phone]"),
    ("linha 808 200 300", "linha [phone]"),
    ("call +44 20 7946 0958 now", "call [phone] now"),
    ("US: +1 (555) 123-4567", "US: [phone]"),
    ("0044 20 7946 0958", "[phone]"),
    ("+34 612 34 56 78", "[phone]"),
    ("IBAN PT50 0002 0123 1234 5678 9015 4 obrigado", "IBAN [iban] obrigado"),
    ("iban: PT50000201231234567890154", "iban: [iban]"),
    ("DE89 3704 0044 0532 0130 00", "[iban]"),
    ("NIF: 123456789", "NIF: [nif]"),
    ("NIF 234 567 891", "NIF [nif]"),
    ("contribuinte n.º 234567891", "contribuinte n.º [nif]"),
    ("o meu número de contribuinte é 287654321", "o meu número de contribuinte é [nif]"),
    ("cartão 4111 1111 1111 1111 val 12/27", "cartão [card] val 12/27"),
    ("4111-1111-1111-1111", "[card]"),
    ("card 4111111111111111", "card [card]"),
    ("digits 1234567890123", "digits [card]"),
    ("fala com @joao_silva sobre isso", "fala com [user] sobre isso"),
    ("@Farense1910fan disse", "[user] disse"),
    ("grupo https://t.me/+AbCdEf123 aqui", "grupo [link] aqui"),
    ("canal t.me/farense_adeptos.", "canal [link]."),
    ("see https://example.com/profile?id=42&ref=joao.", "see [url]."),
    ("www.site.pt/p?utm_source=tg", "[url]"),
]

FOOTBALL = [
    "SC Farense was founded on 1 April 1910.",
    "O Farense foi fundado a 1 de abril de 1910.",
    "Farense won 2-1 at home and drew 1-1 away; final score 3–2 (45+2).",
    "The 1990 Taça de Portugal final was on 27 May 1990, replayed on 3 June 1990.",
    "Dates: 27/05/1990, 1990-05-27, 2019-05-27 and 27.05.1990.",
    "Seasons 1989-90, 1990/91, 2019–20 and 1939-40.",
    "Attendance: 14,000 fans; 10.018 espectadores; 14 000 adeptos; 7 000 lugares.",
    "A capacidade do Estádio de São Luís é de 7.000 e o Algarve fica a 75 km de Sevilha.",
    "Faro is 278 km from Lisbon and the club has 1,234,567 views.",
    "Budget of 3.000.000 euros in 2020, 1 500 000 € in 2021.",
    "Record: 34 games, 12-8-14, goal difference +3, 48 points.",
    "Postal code 8000-000 Faro, shirt number 10, minute 89.",
    "Visit https://www.scfarense.pt for the official site.",
    "Leões de Faro, Estádio Algarve, UEFA 2020.",
    "He scored 100 goals in 250 matches between 1985 and 1995.",
]


@pytest.mark.parametrize(("text", "expected"), PERSONAL)
def test_personal_data_is_replaced(text, expected):
    assert scrub(text) == expected


@pytest.mark.parametrize("text", FOOTBALL)
def test_football_facts_are_untouched(text):
    assert scrub_counted(text) == (text, 0)


def test_counts_every_replacement_and_keeps_the_rest():
    text = "Farense 2-1 in 1910! mail a@b.pt or 912 345 678, @someone_here, NIF 123456789"
    assert scrub_counted(text) == ("Farense 2-1 in 1910! mail [email] or [phone], [user], NIF [nif]", 4)


def test_grouped_digits_failing_the_card_checksum_are_kept():
    assert scrub("codes 1234 5678 9012 3456") == "codes 1234 5678 9012 3456"


def test_unlabelled_nine_digit_numbers_that_cannot_be_phones_are_kept():
    assert scrub("ref 123456789") == "ref 123456789"
    assert scrub("paid 912.345.678 euros") == "paid 912.345.678 euros"


@given(st.text())
def test_scrub_is_idempotent(text):
    once = scrub(text)
    assert scrub(once) == once


years = st.integers(1900, 2030).map(str)
scores = st.tuples(st.integers(0, 9), st.integers(0, 9)).map(lambda s: f"{s[0]}-{s[1]}")
attendances = st.integers(1, 60).map(lambda k: f"{k},{st_three(k)}")
months = st.sampled_from(["January", "May", "abril", "dezembro"])
dates = st.tuples(st.integers(1, 28), months, years).map(lambda d: f"{d[0]} {d[1]} {d[2]}")
distances = st.integers(1, 999).map(lambda km: f"{km} km")


def st_three(seed: int) -> str:
    return f"{(seed * 37) % 1000:03d}"


@given(st.lists(st.one_of(years, scores, attendances, dates, distances), min_size=1, max_size=8))
def test_sentences_of_football_numbers_are_never_changed(parts):
    sentence = "Farense: " + ", ".join(parts) + "."
    assert scrub(sentence) == sentence
