"""The embedded synthetic language pair: determinism, sizes, disjoint splits, and the grammar itself."""
import random

import pytest

from revsearch import cli
from revsearch.data.corpus import CorpusConfig, load_corpus
from revsearch.data.synthetic import (NOUNS, SyntheticConfig, _Grammar, conjugate, generate_corpus,
                                      generate_pairs)
from revsearch.errors import DataError


def test_deterministic_for_a_seed():
    assert generate_pairs(200, seed=5) == generate_pairs(200, seed=5)
    assert generate_pairs(200, seed=5) != generate_pairs(200, seed=6)
    cfg = SyntheticConfig(train=300, valid=50, test=50, seed=2)
    assert generate_corpus(cfg) == generate_corpus(cfg)


def test_lengths_uniqueness_and_disjoint_splits():
    cfg = SyntheticConfig(train=1000, valid=100, test=100, seed=9, min_words=5, max_words=20)
    splits = generate_corpus(cfg)
    assert [len(splits[s]) for s in ("train", "valid", "test")] == [1000, 100, 100]
    for pairs in splits.values():
        for s, t in pairs:
            assert 5 <= len(s.split()) <= 20 and 5 <= len(t.split()) <= 20
            assert s[0].isupper() and t[0].isupper() and s[-1] in ".?" and t[-1] == s[-1]
    sources = {k: {s for s, _ in v} for k, v in splits.items()}
    assert len(sources["train"]) == 1000
    assert not sources["train"] & sources["test"] and not sources["train"] & sources["valid"]
    assert not sources["valid"] & sources["test"]


def test_configurable_lengths():
    short = generate_pairs(100, seed=1, config=SyntheticConfig(min_words=5, max_words=8))
    assert all(len(s.split()) <= 8 and len(t.split()) <= 8 for s, t in short)
    with pytest.raises(DataError):
        SyntheticConfig(min_words=10, max_words=5)


def test_morphology():
    assert [conjugate("spiel", p, n, False) for p, n in [(1, "sg"), (2, "sg"), (3, "sg"), (1, "pl"), (3, "pl")]] \
        == ["spiele", "spielst", "spielt", "spielen", "spielen"]
    assert [conjugate("arbeit", 2, "sg", False), conjugate("arbeit", 3, "sg", True)] == ["arbeitest", "arbeitete"]
    assert [conjugate("zeichn", 3, "sg", False), conjugate("wohn", 3, "sg", False)] == ["zeichnet", "wohnt"]
    assert [conjugate("tanz", 2, "sg", False), conjugate("spiel", 3, "pl", True)] == ["tanzt", "spielten"]


def _np(case, noun, det, plural=False, adjective=None):
    """Generate one German noun phrase with chosen features by driving the grammar's RNG choices."""
    cfg = SyntheticConfig(p_adjective=1.0 if adjective else 0.0, p_np_pp=0.0, p_plural=1.0 if plural else 0.0)

    class Picker(random.Random):
        def choice(self, seq):
            for item in seq:
                if item == noun or (isinstance(item, tuple) and item[0] in (det, adjective)):
                    return item
            return seq[0]
    noun_t = next(n for n in NOUNS if n[0] == noun)
    return " ".join(_Grammar(cfg, Picker(0)).noun_phrase(case, noun=noun_t)[1])


def test_agreement_and_case_in_noun_phrases():
    assert _np("nom", "man", "the", adjective="old") == "der alte Mann"
    assert _np("acc", "man", "a", adjective="old") == "einen alten Mann"
    assert _np("nom", "man", "a", adjective="old") == "ein alter Mann"
    assert _np("nom", "girl", "a", adjective="small") == "ein kleines Mädchen"        # girl is neuter
    assert _np("dat", "man", "the", plural=True, adjective="old") == "den alten Männern"  # dative plural -n
    assert _np("nom", "dog", "a", plural=True, adjective="old") == "alte Hunde"        # strong plural
    assert _np("acc", "student", "the") == "den Studenten"                              # weak masculine
    assert _np("dat", "woman", "my") == "meiner Frau"


def test_word_order_rules():
    pairs = generate_pairs(3000, seed=11)
    adverbs = {"Yesterday": "Gestern", "Often": "Oft"}
    seen = {"v2": 0, "final": 0, "question": 0}
    for s, t in pairs:
        sw, tw = s.rstrip(".?").split(), t.rstrip(".?").split()
        if sw[0] in adverbs and "," not in s:
            # verb second: the word after the fronted adverb is a finite verb, not an article or pronoun
            assert tw[0] == adverbs[sw[0]] and tw[1] not in {"der", "die", "das", "ein", "eine", "ich", "wir"}
            seen["v2"] += 1
        if ", weil " in t and " not " not in s and t.count(",") == 1:
            sub = t.split(", weil ")[1].rstrip(".").split()
            # verb-final: the subordinate clause ends in a conjugated verb (lower-case, not a noun)
            assert sub[-1][0].islower() and sub[-1].endswith(("t", "e", "en", "st", "ten", "test"))
            seen["final"] += 1
        if s.endswith("?"):
            assert sw[0] in {"Do", "Does", "Did"} and tw[0][0].isupper()
            seen["question"] += 1
    assert min(seen.values()) > 20


def test_cli_writes_corpus(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "COMMANDS", ["data"])
    rc = cli.main(["data", "synthetic", "--out", str(tmp_path), "--train", "50", "--valid", "5",
                   "--test", "5", "--seed", "3"])
    assert rc == 0
    corpus = load_corpus(CorpusConfig(dir=str(tmp_path)))
    assert (corpus.src_lang, corpus.tgt_lang, len(corpus.train)) == ("en", "de", 50)
    assert corpus.train == generate_corpus(SyntheticConfig(train=50, valid=5, test=5, seed=3))["train"]


def test_relative_clauses_agree_with_their_head():
    pairs = generate_pairs(2000, seed=4)
    with_rel = [(s, t) for s, t in pairs if " that " in s]
    assert len(with_rel) > 100
    heads = {n[2]: n[4] for n in NOUNS if n[2] != n[3]}     # unambiguous German singular -> gender
    pron = {"nom": {"m": "der", "f": "die", "n": "das"}, "acc": {"m": "den", "f": "die", "n": "das"}}
    checked = 0
    for _, t in with_rel:
        words = t.replace(",", " ,").split()
        for i, w in enumerate(words[:-2]):
            # "<Noun> , <pronoun>" with a singular head noun we know: the pronoun has its gender
            if w in heads and words[i + 1] == "," and words[i + 2] in {"der", "die", "das", "den"}:
                if words[i - 1] in {"der", "die", "das", "den", "dem", "ein", "eine", "einen", "mein", "meine",
                                    "meinen", "dein", "deine", "deinen", "unser", "unsere", "unseren", "kein",
                                    "keine", "keinen"} or words[i - 1].endswith(("e", "en", "er", "es")):
                    assert words[i + 2] in (pron["nom"][heads[w]], pron["acc"][heads[w]]), t
                    checked += 1
    assert checked > 20
