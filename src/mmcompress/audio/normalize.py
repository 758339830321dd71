"""English transcript normalisation before WER, in the spirit of Whisper's EnglishTextNormalizer.

`normalize_english` applies, in order:

1. lower case; text in brackets or parentheses dropped ("[music]", "(laughs)");
2. titles spelled out: mr -> mister, mrs -> missus, ms -> miss, dr -> doctor, st -> saint,
   jr -> junior, sr -> senior;
3. contractions expanded: won't -> will not, can't -> can not, n't -> not, 're -> are,
   'll -> will, 've -> have, 'm -> am, 'd -> would (possessive 's is kept);
4. punctuation and symbols to spaces (hyphens too: "ill-disposed" -> "ill disposed"), except a
   decimal point or thousands comma between digits;
5. spelled-out numbers to digits: "ten" -> "10", "twenty one" -> "21", "two hundred and five" ->
   "205", "three thousand" -> "3000"; adjacent units stay separate numbers ("five five" -> "5 5");
6. hesitations dropped (uh, um, hmm, mm, ah, er, eh);
7. whitespace collapsed.

Not done (Whisper's normaliser does these): British -> American spellings, currencies, ordinals
and fractions.
"""

from __future__ import annotations

import re

UNITS = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
UNITS += "seventeen eighteen nineteen"
UNIT_VALUES = {w: i for i, w in enumerate(UNITS.split())}
TENS_WORDS = "twenty thirty forty fifty sixty seventy eighty ninety"
TENS = {w: 10 * i for i, w in enumerate(TENS_WORDS.split(), start=2)}
SCALES = {"hundred": 100, "thousand": 1000, "million": 1_000_000}
TITLES = {"mr": "mister", "mrs": "missus", "ms": "miss", "dr": "doctor", "st": "saint", "jr": "junior", "sr": "senior"}
CONTRACTIONS = [
    (r"\bwon't\b", "will not"), (r"\bcan't\b", "can not"), (r"\bain't\b", "is not"), (r"n't\b", " not"),
    (r"'re\b", " are"), (r"'ll\b", " will"), (r"'ve\b", " have"), (r"'m\b", " am"), (r"'d\b", " would"),
]  # fmt: skip
HESITATIONS = {"uh", "um", "hmm", "mm", "mhm", "ah", "er", "eh"}


def normalize_english(text: str) -> str:
    """Normalise an English transcript for WER (see the module docstring for every rule).

    Example:
        >>> normalize_english("Mr. Dashwood won't play the 10 of clubs, ill-disposed!")
        'mister dashwood will not play the 10 of clubs ill disposed'
        >>> normalize_english("ten of clubs, twenty one, five five")
        '10 of clubs 21 5 5'
    """
    text = re.sub(r"[\[(][^\])]*[\])]", " ", text.lower().replace("\u2019", "'"))
    for pattern, repl in CONTRACTIONS:
        text = re.sub(pattern, repl, text)
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)  # 1,000 -> 1000
    text = re.sub(r"(?<=\d)\.(?=\d)", "\0", text)  # protect the point of 3.5
    text = "".join(c if c.isalnum() or c in "'\0" else " " for c in text).replace("\0", ".")
    words = [TITLES.get(w, w) for w in (w.strip("'") for w in text.split()) if w]
    words = [w for w in _numbers_to_digits(words) if w not in HESITATIONS]
    return " ".join(words)


def _numbers_to_digits(words: list[str]) -> list[str]:
    """Runs of spelled-out number words -> digit strings (see rule 5)."""
    out: list[str] = []
    i = 0
    while i < len(words):
        value, used = _parse_number(words, i)
        if used:
            out.append(str(value))
            i += used
        else:
            out.append(words[i])
            i += 1
    return out


def _parse_number(words: list[str], start: int) -> tuple[int, int]:
    """(value, words used) of the number spelled from words[start] (0 words used: none)."""
    total, current, i, last = 0, 0, start, None  # last: "unit", "teen", "tens", "scale"
    while i < len(words):
        w = words[i]
        if w == "and" and last == "scale" and i + 1 < len(words) and _is_small(words[i + 1]):
            i += 1
            continue
        if w in UNIT_VALUES and (last in (None, "scale") or (last == "tens" and UNIT_VALUES[w] < 10)):
            current += UNIT_VALUES[w]
            last = "unit"
        elif w in TENS and last in (None, "scale"):
            current += TENS[w]
            last = "tens"
        elif w in SCALES and last is not None and last != "scale":
            scale = SCALES[w]
            if scale == 100:
                current *= 100
            else:
                total, current = total + current * scale, 0
            last = "scale"
        else:
            break
        i += 1
    if last is None:
        return 0, 0
    if words[i - 1] == "and":
        i -= 1
    return total + current, i - start


def _is_small(word: str) -> bool:
    return word in UNIT_VALUES or word in TENS
