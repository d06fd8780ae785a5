"""Request body -> input token count, numeric features and token ids of the last user message (no text kept).

Token counting is exact while the request's text fits ``sample_chars``; beyond that each text is
counted from a head slice proportional to its share of the request, scaled by its length and
calibrated (``SAMPLE_CALIBRATION``). tiktoken costs 0.25-0.6 us/token on our shared VM, so exact
counting of a 2,000-token prompt alone would take most of the 0.5 ms budget.
The sampling error on ShareGPT is measured in ``bench/classifier.py``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from wattgate.classifier.api import requested_max_tokens
from wattgate.classifier.textmodel import TokenIds
from wattgate.classifier.tokens import TokenCounter, counter, encoding_for_model

TOKENS_PER_MESSAGE = 4  # role + separators, as in OpenAI's own counting recipe
TOKENS_PER_REPLY = 3
DEFAULT_SAMPLE_CHARS = 1024
# Sampled counts run ~1% high (a head's tokens are denser than the rest, and its cut leaves a partial
# token): median exact/estimate 0.992 over 3,000 ShareGPT training turns at a 1,024-char budget.
SAMPLE_CALIBRATION = 0.99
NGRAM_HEAD_TOKENS = 256
DENSE_BYTES = 1.5  # UTF-8 bytes per character above which a head is cut to the budget in bytes (``_head``)


def _words(text: str) -> frozenset[bytes]:
    return frozenset(text.encode().split())


# Words and phrases that say something about the answer's length, looked for in the head and tail
# of the last user message (bounded cost). Word sets and substring tests, not regexes: ~10x faster.
_CUE_WORDS = {
    "cue_write": _words("write compose draft create generate"),
    "cue_long": _words("essay article story blog report paper poem script letter chapter outline plan"),
    "cue_explain": _words("explain describe elaborate discuss why"),
    "cue_list": _words("list steps ideas examples ways tips bullet"),
    "cue_code": _words("code function implement python javascript sql class program bug error"),
    "cue_rewrite": _words("rewrite rephrase paraphrase translate summarize summarise summary shorten fix"),
    "cue_short": _words("briefly short concise tldr"),
    "cue_detail": _words("detailed comprehensive thorough"),
}
_CUE_PHRASES = {
    "cue_explain": ("how do",),  # and so "how does"
    "cue_short": ("one word", "one sentence", "yes or no", "only answer", "just answer", "tl;dr"),
    "cue_detail": ("in detail", "step by step"),
}
_FIRST_WORDS = {
    "cue_continue": _words("continue go more next keep"),
    "cue_greeting": _words("hi hello hey thanks thank ok okay great cool"),
    "cue_question": _words("what who when where which is are can does do how"),
}
_CUE_NAMES = (*_CUE_WORDS, *_FIRST_WORDS)
# Phrases as UTF-8 bytes, looked for in the probe's bytes: an ASCII phrase is in a text exactly when its bytes are in
# the text's UTF-8 (no multi-byte character holds an ASCII byte), and a byte search skips str's wide kinds.
_CUE_TESTS = tuple(
    (name, vocab, tuple(p.encode() for p in _CUE_PHRASES.get(name, ()))) for name, vocab in _CUE_WORDS.items()
)
# Words are maximal runs of ASCII a-z in the lowercased text (what ``[a-z]+`` finds): on UTF-8 bytes,
# every other byte (multi-byte characters included) becomes a space, then ``bytes.split``; 2x findall's speed.
_NOT_AZ_TO_SPACE = bytes(c if 97 <= c <= 122 else 32 for c in range(256))
CUE_HEAD_CHARS = 1000
CUE_TAIL_CHARS = 300

# Explicit length instructions ("in 3 sentences", "200 words", "list 10 ideas", "under 50 words"): looked for
# only when the probe holds one of these words (a set test), then with one regex over the probe.
_NUMBER_WORDS = {
    "a": 1.0, "one": 1.0, "single": 1.0, "two": 2.0, "couple": 2.0, "three": 3.0, "few": 3.0, "four": 4.0,
    "several": 4.0, "five": 5.0, "six": 6.0, "seven": 7.0, "eight": 8.0, "nine": 9.0, "ten": 10.0, "eleven": 11.0,
    "twelve": 12.0, "dozen": 12.0, "twenty": 20.0, "fifty": 50.0,
}  # fmt: skip
_ITEM_NOUNS = (
    "examples ideas ways tips reasons questions points steps names items things options suggestions titles "
    "headlines facts bullets bullet taglines slogans sentences paragraphs words lines verses stanzas"
)
_LENGTH_VOCAB = _words(_ITEM_NOUNS + " word sentence paragraph line list top")
_NUM = r"(\d{1,5}|" + "|".join(sorted(_NUMBER_WORDS, key=len, reverse=True)) + r")"
# The regexes' alternatives, kept as literals too: the scans below start the regexes only where a match can begin.
_BOUNDS = (
    "under", "below", "less than", "fewer than", "no more than", "not more than", "at most", "maximum of", "max",
    "up to", "within", "limited to", "limit to", "at least", "minimum of", "more than", "over",
)  # fmt: skip
_ADJECTIVES = (
    "short ", "brief ", "long ", "detailed ", "more ", "different ", "unique ", "key ", "main ", "good ", "best ",
    "creative ", "catchy ",
)  # fmt: skip
_UNIT_SINGULARS = ("word", "sentence", "paragraph", "line", "verse", "stanza")  # "s" optional; then "bullet(s)"
_UNIT_PLURALS = (
    "examples", "ideas", "ways", "tips", "reasons", "questions", "points", "steps", "names", "items", "things",
    "options", "suggestions", "titles", "headlines", "facts", "taglines", "slogans",
)  # fmt: skip
_UNIT_RE = re.compile(
    r"(?P<bound>" + "|".join(_BOUNDS) + r")?\s*" + _NUM + r"[\s-]*(?:" + "|".join(_ADJECTIVES) + r")?"
    r"(?P<unit>"
    + "".join(f"{u}s?|" for u in _UNIT_SINGULARS)
    + r"bullets?(?: points)?|"
    + "|".join(_UNIT_PLURALS)
    + r")\b"
)
_LIST_VERBS = ("list", "top", "give me", "provide", "generate", "suggest", "name")
_LIST_RE = re.compile(
    r"\b(?:" + "|".join(_LIST_VERBS) + r")\s+"
    r"(\d{1,3}|two|three|four|five|six|seven|eight|nine|ten|dozen)\b"
)
_UPPER = frozenset((
    "under", "below", "less than", "fewer than", "no more than", "not more than", "at most", "maximum of", "max",
    "up to", "within", "limit to", "limited to",
))  # fmt: skip
# Tokens a unit stands for (modelled: ~1.3 tokens a word, ~22 a sentence, ~90 a paragraph, ~12 a line,
# ~30 a list item): what matters is the order of magnitude, which the trees and adaptation refine.
_UNIT_TOKENS = {"word": 1.3, "sentence": 22.0, "paragraph": 90.0, "line": 12.0, "verse": 12.0, "stanza": 50.0}
_CODE_CHARS = "{};=()<>[]_"
_CODE_BYTES = _CODE_CHARS.encode()
_REASONING_LEVELS = {"none": 0.0, "minimal": 0.5, "low": 1.0, "medium": 2.0, "high": 3.0, "xhigh": 4.0}

FEATURE_NAMES: tuple[str, ...] = (
    "endpoint_chat",
    "log_input_tokens",
    "log_last_user_tokens",
    "log_system_tokens",
    "log_history_tokens",
    "n_messages",
    "n_assistant_turns",
    "log_last_assistant_tokens",
    "log_mean_assistant_tokens",
    "has_tools",
    "n_tools",
    "response_format_json",
    "n_stop",
    "has_max_tokens",
    "log_max_tokens",
    "temperature",
    "n_lines_last_user",
    "has_code_block",
    "n_question_marks",
    "ends_with_question",
    *_CUE_NAMES,
    "log_req_tokens",
    "req_upper_bound",
    "req_items",
    "code_char_ratio",
    "non_ascii_ratio",
    "reasoning_level",
    "log_thinking_budget",
    "tool_choice_required",
    "last_is_tool_result",
    "response_format_schema",
)


@dataclass(frozen=True)
class Extracted:
    """What the model needs of one request: the token count, numeric features, and token ids for n-grams."""

    input_tokens: int
    features: dict[str, float]
    ngram_ids: TokenIds
    exact_count: bool


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(part.get("text", "")) for part in content if isinstance(part, Mapping) and part.get("type") == "text"
        )
    return ""


def _messages(body: Mapping[str, Any], endpoint: str) -> tuple[list[str], list[str]]:
    """The roles and texts of the request's messages (a completion's prompt is one user message)."""
    if endpoint == "completions":
        prompt = body.get("prompt")
        if isinstance(prompt, list):
            prompt = "\n".join(p for p in prompt if isinstance(p, str))
        return ["user"], [prompt if isinstance(prompt, str) else ""]
    roles, texts = [], []
    for msg in body.get("messages") or ():
        if isinstance(msg, Mapping):
            roles.append(str(msg.get("role", "user")))
            content = msg.get("content")
            texts.append(content if isinstance(content, str) else _content_text(content))
    return roles, texts


_ENCODINGS: dict[str | None, str] = {}  # model name -> encoding name, for the first 1,024 names seen


def _encoding_of(model: str | None) -> str:
    name = _ENCODINGS.get(model)
    if name is None:
        name = encoding_for_model(model)
        if len(_ENCODINGS) < 1024:
            _ENCODINGS[model] = name
    return name


def _log(n: float) -> float:
    return math.log1p(max(0.0, n))


def _extrapolate(piece_tokens: int, piece_chars: int, text_chars: int) -> int:
    """Tokens of a text from those of its head: scaled by length, less the cut's half token, calibrated."""
    return max(1, round((piece_tokens - 0.5) * text_chars / piece_chars * SAMPLE_CALIBRATION))


def _head(text: str, budget: int) -> str:
    """The first ``budget`` characters of ``text``; when they take over ``DENSE_BYTES`` x ``budget`` UTF-8 bytes
    (CJK, Cyrillic, ...), cut to about ``budget`` bytes. tiktoken's cost follows tokens, and a character of CJK
    text is ~1 token where one of English is ~0.25: a budget in characters let non-Latin requests cost up to 4x
    the tokenization (the held-out tail). Text with a few accents or curly quotes is unchanged."""
    piece = text[:budget]
    if piece.isascii():
        return piece
    size = len(piece.encode("utf-8", "surrogatepass"))
    return piece if size <= DENSE_BYTES * budget else piece[: max(1, len(piece) * budget // size)]


class FeatureExtractor:
    """Turns a request body into ``Extracted``; one per process, shares the lazily loaded encodings."""

    def __init__(self, sample_chars: int = DEFAULT_SAMPLE_CHARS) -> None:
        self.sample_chars = sample_chars

    def counts(self, texts: Sequence[str], enc: TokenCounter, last: int) -> tuple[list[int], TokenIds, bool]:
        """Token count per text (exact or sampled) and the head token ids of ``texts[last]``."""
        total = sum(len(t) for t in texts)
        exact = total <= self.sample_chars
        if exact and not all(map(str.isascii, texts)):  # dense non-Latin text: a budget in bytes (see ``_head``)
            exact = sum(len(t.encode("utf-8", "surrogatepass")) for t in texts) <= DENSE_BYTES * self.sample_chars
        out: list[int] = []
        head_ids: TokenIds = []
        for i, text in enumerate(texts):
            encode = enc.ids if i == last else enc.encode  # ids kept: an array; counted only: tiktoken's plain call
            if exact or not text:
                ids = encode(text)
                out.append(len(ids))
                if i == last:
                    head_ids = ids[:NGRAM_HEAD_TOKENS]
                continue
            share = max(64, self.sample_chars * len(text) // total)
            piece = _head(text, share)
            ids = encode(piece)
            out.append(len(ids) if len(piece) >= len(text) else _extrapolate(len(ids), len(piece), len(text)))
            if i == last:
                head_ids = ids[:NGRAM_HEAD_TOKENS]
        return out, head_ids, exact

    def extract(self, body: Mapping[str, Any], endpoint: str) -> Extracted:
        model = body.get("model")
        enc = counter(_encoding_of(model if isinstance(model, str) else None))
        roles, texts = _messages(body, endpoint)
        if not roles:
            roles, texts = ["user"], [""]
        last = len(roles) - 1  # the last user message, else the last message
        for i in range(last, -1, -1):
            if roles[i] == "user":
                last = i
                break
        counts, head_ids, exact = self.counts(texts, enc, last)
        chat = endpoint == "chat"
        input_tokens = sum(counts) + (TOKENS_PER_MESSAGE * len(roles) + TOKENS_PER_REPLY if chat else 0)
        feats = _body_features(body, chat, input_tokens)
        _turn_features(roles, counts, last, feats)
        _text_features(texts[last], feats)
        return Extracted(max(1, input_tokens), feats, head_ids, exact)


def _body_features(body: Mapping[str, Any], chat: bool, input_tokens: int) -> dict[str, float]:
    tools = body.get("tools") or body.get("functions") or []
    rf = body.get("response_format")
    rf_type = rf.get("type") if isinstance(rf, Mapping) else None
    stop = body.get("stop")
    n_stop = 1 if isinstance(stop, str) else len(stop) if isinstance(stop, list) else 0
    max_tokens = requested_max_tokens(body)
    temperature = body.get("temperature")
    tool_choice = body.get("tool_choice")
    level, budget = _reasoning(body)
    return {
        "reasoning_level": level,
        "log_thinking_budget": _log(budget),
        "tool_choice_required": 1.0 if tool_choice == "required" or isinstance(tool_choice, Mapping) else 0.0,
        "response_format_schema": 1.0 if rf_type == "json_schema" else 0.0,
        "endpoint_chat": 1.0 if chat else 0.0,
        "log_input_tokens": _log(input_tokens),
        "has_tools": 1.0 if tools else 0.0,
        "n_tools": float(len(tools)) if isinstance(tools, list) else 0.0,
        "response_format_json": 1.0 if rf_type in ("json_object", "json_schema") else 0.0,
        "n_stop": float(n_stop),
        "has_max_tokens": 0.0 if max_tokens is None else 1.0,
        "log_max_tokens": _log(max_tokens or 0),
        "temperature": float(temperature) if isinstance(temperature, int | float) else 1.0,
    }


def _reasoning(body: Mapping[str, Any]) -> tuple[float, float]:
    """(reasoning level, thinking budget tokens) from ``reasoning_effort`` (OpenAI), ``reasoning.effort``
    (Responses API, OpenRouter), ``thinking`` (Anthropic, via LiteLLM) and ``chat_template_kwargs.enable_thinking``
    (vLLM / SGLang chat templates such as Qwen3's)."""
    effort = body.get("reasoning_effort")
    reasoning = body.get("reasoning")
    if effort is None and isinstance(reasoning, Mapping):
        effort = reasoning.get("effort")
    level = _REASONING_LEVELS.get(effort, 2.0) if isinstance(effort, str) else 0.0
    budget = 0.0
    thinking = body.get("thinking")
    if isinstance(thinking, Mapping) and thinking.get("type") in ("enabled", "adaptive"):
        level = max(level, 2.0)
        raw = thinking.get("budget_tokens")
        budget = float(raw) if isinstance(raw, int | float) and not isinstance(raw, bool) else 0.0
    kwargs = body.get("chat_template_kwargs")
    if isinstance(kwargs, Mapping) and kwargs.get("enable_thinking") is True:
        level = max(level, 2.0)
    return level, max(0.0, budget)


def _turn_features(roles: list[str], counts: list[int], last: int, out: dict[str, float]) -> None:
    assistant = [c for r, c in zip(roles, counts, strict=True) if r == "assistant"]
    system = sum(c for r, c in zip(roles, counts, strict=True) if r in ("system", "developer"))
    out |= {
        "log_last_user_tokens": _log(counts[last]),
        "log_system_tokens": _log(system),
        "log_history_tokens": _log(sum(counts) - counts[last] - system),
        "n_messages": float(len(roles)),
        "n_assistant_turns": float(len(assistant)),
        "log_last_assistant_tokens": _log(assistant[-1]) if assistant else 0.0,
        "log_mean_assistant_tokens": _log(sum(assistant) / len(assistant)) if assistant else 0.0,
        "last_is_tool_result": 1.0 if roles and roles[-1] in ("tool", "function") else 0.0,
    }


def _text_features(text: str, out: dict[str, float] | None = None) -> dict[str, float]:
    """The last user message's features, added to ``out`` (a new dict if None), which is returned."""
    out = {} if out is None else out
    probe = (text[:CUE_HEAD_CHARS] + "\n" + text[-CUE_TAIL_CHARS:] if len(text) > CUE_HEAD_CHARS else text).lower()
    raw = probe.encode("utf-8", "surrogatepass")
    word_list = raw.translate(_NOT_AZ_TO_SPACE).split()
    words = set(word_list)
    first_word = word_list[0] if word_list else b""
    out["n_lines_last_user"] = float(text.count("\n", 0, 20_000) + 1)
    out["has_code_block"] = 1.0 if b"```" in raw else 0.0
    out["n_question_marks"] = float(raw.count(b"?"))
    out["ends_with_question"] = 1.0 if text.rstrip().endswith("?") else 0.0
    for name, vocab, phrases in _CUE_TESTS:
        hit = not words.isdisjoint(vocab)
        for phrase in phrases:
            hit = hit or phrase in raw
        out[name] = 1.0 if hit else 0.0
    if not out["cue_detail"] and _asks_count(probe, words):
        out["cue_detail"] = 1.0
    for name, vocab in _FIRST_WORDS.items():
        out[name] = 1.0 if first_word in vocab else 0.0
    n = len(probe) or 1
    # ASCII characters are single bytes in UTF-8: the code characters' count is the bytes one delete drops
    out["code_char_ratio"] = (len(raw) - len(raw.translate(None, _CODE_BYTES))) / n
    ascii_chars = len(probe) if probe.isascii() else len(probe.encode("ascii", "ignore"))
    out["non_ascii_ratio"] = (n - ascii_chars) / n
    out.update(_length_request(probe, words) if not words.isdisjoint(_LENGTH_VOCAB) else _NO_REQUEST)
    return out


_NO_REQUEST = {"log_req_tokens": 0.0, "req_upper_bound": 0.0, "req_items": 0.0}


def _number(text: str) -> float:
    return float(text) if text.isdigit() else _NUMBER_WORDS.get(text, 0.0)


# A regex search tries its pattern at every position of the probe: ~0.3 us each here, 0.4 ms for a 1,300-character
# probe, the largest single cost of a long request. A match of ``_UNIT_RE`` ends in a unit word, so the scans
# below find the unit words with ``str.find`` and go back to where a match through each could start (a number
# right before it, past an adjective and blanks, past blanks and a bound before the number), then try the regex
# only there: the same matches, in the same order (tested against ``finditer`` on held-out requests and fuzz).
_NUMBERS_BY_LAST: dict[str, tuple[str, ...]] = {}
for _w in _NUMBER_WORDS:
    _NUMBERS_BY_LAST[_w[-1]] = (*_NUMBERS_BY_LAST.get(_w[-1], ()), _w)
# Each unit word, a prefix of all its forms ("word" of "words", "bullet" of "bullet points"): one ``str.find`` each
# (~0.5 us on a 1,300-character probe). A gate by the probe's word endings saved some of these finds but cost more
# than all of them: one bytes slice per word of the probe (~0.3 us each here).
_UNITS = (*_UNIT_SINGULARS, "bullet", *_UNIT_PLURALS)
# A list verb is a whole a-z word (``\b`` before, blanks after): looked for only when the probe has its words.
_LIST_GATES = tuple((verb, frozenset(verb.encode().split())) for verb in _LIST_VERBS)


def _az_words(probe: str) -> set[bytes]:
    """The maximal runs of a-z in ``probe`` (what ``[a-z]+`` finds), as a set of bytes."""
    return set(probe.encode("utf-8", "surrogatepass").translate(_NOT_AZ_TO_SPACE).split())


def _blank_start(text: str, i: int, dash: bool) -> int:
    """Where the run of whitespace (and hyphens if ``dash``) ending at ``i`` starts."""
    while i and (text[i - 1].isspace() or (dash and text[i - 1] == "-")):
        i -= 1
    return i


def _unit_candidates(probe: str) -> list[tuple[int, int]]:
    """Intervals [lo, hi] holding every position where a ``_UNIT_RE`` match can start (a superset)."""
    out: list[tuple[int, int]] = []
    for unit in _UNITS:
        u = probe.find(unit)
        while u >= 0:
            ends = [u]
            if probe.endswith(_ADJECTIVES, 0, u):
                ends += [u - len(a) for a in _ADJECTIVES if probe.endswith(a, 0, u)]
            for end in ends:
                e = _blank_start(probe, end, dash=True)  # the number ends where the blanks before the unit start
                c = probe[e - 1] if e else ""
                if c.isdecimal():
                    n = e - 1
                    starts = [n]
                    while len(starts) < 5 and n and probe[n - 1].isdecimal():
                        n -= 1
                        starts.append(n)
                else:
                    starts = [e - len(w) for w in _NUMBERS_BY_LAST.get(c, ()) if probe.endswith(w, 0, e)]
                for n in starts:
                    s = _blank_start(probe, n, dash=False)
                    out.append((s, n))  # no bound: anywhere in the blanks before the number
                    if probe.endswith(_BOUNDS, 0, s):
                        out += [(s - len(b), s - len(b)) for b in _BOUNDS if probe.endswith(b, 0, s)]
            u = probe.find(unit, u + 1)
    return out


def _unit_matches(probe: str) -> Iterator[re.Match[str]]:
    """``_UNIT_RE.finditer(probe)``, trying the regex only where a match can start."""
    candidates = _unit_candidates(probe)
    pos = 0
    while True:
        starts = sorted({max(lo, pos) for lo, hi in candidates if max(lo, pos) <= hi})
        for s in starts:
            m = _UNIT_RE.match(probe, s)
            if m:
                break
        else:
            return
        yield m
        pos = m.end()


def _list_search(probe: str, words: set[bytes] | None = None) -> re.Match[str] | None:
    """``_LIST_RE.search(probe)``: the regex tried only where one of its verbs starts."""
    words = _az_words(probe) if words is None else words
    starts = []
    for verb, gate in _LIST_GATES:
        if not gate <= words:
            continue
        i = probe.find(verb)
        while i >= 0:
            starts.append(i)
            i = probe.find(verb, i + 1)
    for s in sorted(starts):
        m = _LIST_RE.match(probe, s)
        if m:
            return m
    return None


def _followed(probe: str, literal: str, at: int) -> bool:
    """Whether ``literal`` occurs with a decimal digit ``at`` characters from where it starts."""
    i = probe.find(literal)
    while i >= 0:
        j = i + at
        if 0 <= j < len(probe) and probe[j].isdecimal():
            return True
        i = probe.find(literal, i + 1)
    return False


def _asks_count(probe: str, words: set[bytes]) -> bool:
    r"""A count asked for: ``("at least" in probe or b"words" in words) and re.search(r"at least \d+|\d+ words",
    probe)``. "at least <digit>" implies "at least" in the probe and "least" among its words: that half needs no
    other test."""
    if b"least" in words and _followed(probe, "at least ", len("at least ")):
        return True
    return (b"words" in words or "at least" in probe) and _followed(probe, " words", -1)


def _length_request(probe: str, words: set[bytes] | None = None) -> dict[str, float]:
    """The first explicit length instruction in the probe: tokens asked for (modelled), upper bound or not, items."""
    words = _az_words(probe) if words is None else words
    for m in _unit_matches(probe):
        n, unit = _number(m.group(2)), m.group("unit")
        if not 1 <= n <= 20_000:
            continue
        base = unit.rstrip("s") if unit.rstrip("s") in _UNIT_TOKENS else ""
        per = _UNIT_TOKENS.get(base, 30.0)
        upper = 1.0 if (m.group("bound") or "") in _UPPER else 0.0
        return {"log_req_tokens": _log(per * n), "req_upper_bound": upper, "req_items": 0.0 if base else n}
    found = _list_search(probe, words)
    if found:
        n = _number(found.group(1))
        if 1 <= n <= 200:
            return {"log_req_tokens": _log(30.0 * n), "req_upper_bound": 0.0, "req_items": n}
    return _NO_REQUEST


@dataclass(frozen=True)
class Sample:
    """One finished request as adaptation sees it: features, text slots, the served model and the true length."""

    features: dict[str, float]
    output_tokens: int
    ts: float
    model: str = ""  # the served model that answered
    slots: list[int] | None = None  # hashed text slots, None when the gateway kept none


def feature_vector(features: Mapping[str, float], names: Sequence[str]) -> list[float]:
    """Features in model order; a name missing from ``features`` (an older gateway) counts as 0."""
    return [float(features.get(name, 0.0)) for name in names]
