"""Mandarin transcript normalisation for corpora written by people (AISHELL-style readers).

AISHELL-1's own text is clean, but corpora in its layout often are not: full-width digits and
letters (１２３, ＡＢＣ), Latin words in either case, Chinese and ASCII punctuation. Left alone, each
variant would become a unit of its own and every punctuation mark a token the audio never says.
NFKC folds full-width forms to ASCII, Latin letters go to upper case (as in AISHELL-2 and
WenetSpeech), and punctuation and spaces are removed.
"""

from __future__ import annotations

import unicodedata


def normalize_mandarin(text: str) -> str:
    """`text` with full-width forms folded, Latin letters upper-cased, punctuation and spaces removed."""
    folded = unicodedata.normalize("NFKC", text).upper()
    return "".join(ch for ch in folded if not ch.isspace() and not unicodedata.category(ch).startswith("P"))
