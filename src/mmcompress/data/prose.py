"""English prose sentences, offline: the Python documentation that ships with the interpreter
(`pydoc_data`), for sentence-embedding evaluation and for text to synthesize speech from."""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache

CODE_CHARS = r"[*=()\[\]{}`|>\"'-]"  # sentences with these are code or markup, not prose


@lru_cache(maxsize=4)
def prose_sentences(n: int = 200) -> tuple[str, ...]:
    """`n` prose sentences of 6 to 40 words from the bundled Python docs, in a stable order (a hash
    of each sentence), so a longer `n` extends a shorter one and every run gets the same set.

    Example:
        >>> len(prose_sentences(3)), prose_sentences(3)[0].endswith(".")
        (3, True)
    """
    from pydoc_data.topics import topics

    text = re.sub(r"\s+", " ", " ".join(topics[k] for k in sorted(topics)))
    candidates = {
        s
        for s in re.split(r"(?<=[.!?])\s+", text)
        if 6 <= len(s.split()) <= 40 and s[:1].isupper() and s.endswith(".") and not re.search(CODE_CHARS, s)
    }
    ranked = sorted(candidates, key=lambda s: hashlib.sha256(s.encode()).hexdigest())
    return tuple(ranked[:n])
