"""The length-instruction scans try their regexes only where a match can start: the same matches as a full scan."""

from __future__ import annotations

import math
import random
import re

import pytest

from wattgate.classifier.features import (
    _LIST_RE,
    _UNIT_RE,
    _asks_count,
    _length_request,
    _list_search,
    _text_features,
    _unit_matches,
)

# The definitions as they were written before the anchored scans (the spec the scans must reproduce).
_NUM = (
    r"(\d{1,5}|several|single|couple|eleven|twelve|twenty|three|seven|eight|dozen|fifty|four|five|nine|one|two|few|"
    r"six|ten|a)"
)
SPEC_UNIT = re.compile(
    r"(?P<bound>under|below|less than|fewer than|no more than|not more than|at most|maximum of|max|up to|within|"
    r"limit(?:ed)? to|at least|minimum of|more than|over)?\s*"
    + _NUM
    + r"[\s-]*(?:short |brief |long |detailed |more |different |unique |key |main |good |best |creative |catchy )?"
    r"(?P<unit>words?|sentences?|paragraphs?|lines?|verses?|stanzas?|bullets?(?: points)?|"
    r"examples|ideas|ways|tips|reasons|questions|points|steps|names|items|things|options|suggestions|titles|"
    r"headlines|facts|taglines|slogans)\b"
)
SPEC_LIST = re.compile(
    r"\b(?:list|top|give me|provide|generate|suggest|name)\s+"
    r"(\d{1,3}|two|three|four|five|six|seven|eight|nine|ten|dozen)\b"
)
SPEC_COUNT = re.compile(r"at least \d+|\d+ words")

_WORDS = """
a one single two couple three few four several five six seven eight nine ten eleven twelve dozen twenty fifty
0 1 7 12 300 4500 99999 123456 0000 \u0663\u0660 \u00b2 5x x5
under below less than fewer no more not at most maximum of max up to within limit limited least minimum over
short brief long detailed different unique key main good best creative catchy
word words sentence sentences paragraph paragraphs line lines verse verses stanza stanzas bullet bullets
points examples ideas ways tips reasons questions steps names items things options suggestions titles
headlines facts taglines slogans always keywords online outline newsline wordsmith linesx bulletin often
list top give me provide generate suggest name names listing laptop
"""
PIECES = [
    *_WORDS.split(),
    *(" ", "  ", "\t", "\n", "\xa0", "\u3000", "-", "--", " - ", ",", ".", "?", "_", "\u00e9", "\u5199", "words\u00e9"),
]


def _probe(rng: random.Random) -> str:
    out = []
    for _ in range(rng.randint(1, 40)):
        out.append(rng.choice(PIECES))
        if rng.random() < 0.6:
            out.append(rng.choice([" ", "", "  ", "-", "\n"]))
    return "".join(out)


def _spans(matches: object) -> list[tuple[tuple[int, int], tuple[str | None, ...]]]:
    return [(m.span(), m.groups()) for m in matches]  # type: ignore[attr-defined]


def test_the_regexes_are_the_spec() -> None:
    """Built from the literal tuples: the same language as the hand-written patterns (one alternative spelt out)."""
    assert _UNIT_RE.pattern == SPEC_UNIT.pattern.replace("limit(?:ed)? to", "limited to|limit to")
    assert _LIST_RE.pattern == SPEC_LIST.pattern


@pytest.mark.parametrize("seed", range(8))
def test_anchored_scans_find_what_full_scans_find(seed: int) -> None:
    rng = random.Random(seed)
    hits = 0
    for _ in range(1500):
        probe = _probe(rng)
        expected = _spans(SPEC_UNIT.finditer(probe))
        assert _spans(_unit_matches(probe)) == expected, probe
        hits += bool(expected)
        found, spec = _list_search(probe), SPEC_LIST.search(probe)
        assert (found and (found.span(), found.groups())) == (spec and (spec.span(), spec.groups())), probe
        words = set(w.encode() for w in re.findall(r"[a-z]+", probe))
        spec_count = ("at least" in probe or b"words" in words) and bool(SPEC_COUNT.search(probe))
        assert _asks_count(probe, words) == spec_count, probe
    assert hits > 300  # the fuzz does exercise matches, not only misses


@pytest.mark.parametrize(
    ("text", "tokens", "upper", "items"),
    [
        ("Write it in under 50 words please", 1.3 * 50, 1.0, 0.0),
        ("give me five catchy slogans", 30.0 * 5, 0.0, 5.0),
        ("a 0 words answer, then 3   -  short paragraphs", 90.0 * 3, 0.0, 0.0),  # 0 is skipped, the scan goes on
        ("always list 7 things", 30.0 * 7, 0.0, 7.0),
        ("list 7", 30.0 * 7, 0.0, 7.0),  # no unit: the list verb
        ("keywords, always, often ideas", 30.0 * 10, 0.0, 10.0),  # "of-ten ideas": the spec's own reading, kept
    ],
)
def test_length_requests(text: str, tokens: float, upper: float, items: float) -> None:
    got = _length_request(text.lower())
    assert got == {"log_req_tokens": math.log1p(tokens), "req_upper_bound": upper, "req_items": items}


def test_a_long_probe_is_scanned_the_same_way() -> None:
    """A 1,300-character probe full of unit-like words (the held-out tail's case) gives the full scan's answer."""
    body = "We always list the keywords, headlines and outlines online; " * 30 + "then write 3 short paragraphs."
    probe = (body[:1000] + "\n" + body[-300:]).lower()
    assert _spans(_unit_matches(probe)) == _spans(SPEC_UNIT.finditer(probe))
    assert _text_features(body)["log_req_tokens"] > 0
