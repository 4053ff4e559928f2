"""Recipe stage: a character (or BPE piece) n-gram LM from the training transcripts (``paddle-asr build-lm``).

No LM can be downloaded where the recipes run, so the LM decoder's model is estimated from the
training text itself: transcripts -> characters -> interpolated modified Kneser-Ney -> ARPA. The
ARPA file is what the decode config's ``lm_path`` points at; a user with PaddleSpeech's published
``zh_giga`` KenLM binary can point there instead.

Besides the ARPA file, it writes the LM training text (one sentence per line, characters separated
by spaces: the input KenLM's ``lmplz`` and SRILM's ``ngram-count`` expect, for comparing builds)
and a JSON summary with the n-gram counts, the discounts and, given a dev set, its perplexity next
to a unigram model's.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from paddle_asr.artifacts import atomic_write_text
from paddle_asr.data.tokenizer import BLANK, BPE_MODEL, SPACE, CharTokenizer, load_tokenizer
from paddle_asr.data.tokenizer import EOS as UNIT_EOS
from paddle_asr.errors import AsrError
from paddle_asr.lm.arpa import UNK, write_arpa
from paddle_asr.lm.corpus import read_transcripts, transcript_words
from paddle_asr.lm.kneser_ney import build_kneser_ney
from paddle_asr.lm.scorer import NgramScorer, perplexity


def _word_splitter(units: Path | None, keep_spaces: bool) -> Callable[[str], list[str]]:
    """How a transcript becomes LM words: the sentencepiece pieces of a ``bpe.model`` beside
    `units`, else its characters (with ``<space>`` when asked, or when `units` has it)."""
    bpe = None
    if units is not None and Path(units).with_name(BPE_MODEL).is_file():
        bpe = load_tokenizer(Path(units), "bpe")
    if units is not None and SPACE in CharTokenizer.from_file(Path(units)).units:
        keep_spaces = True  # a character model that emits <space> (English) needs it scored

    def words_of(transcript: str) -> list[str]:
        return bpe.pieces(transcript) if bpe else transcript_words(transcript, keep_spaces)

    return words_of


def _read_sentences(path: Path, fmt: str, words_of: Callable[[str], list[str]]) -> list[list[str]]:
    """The non-empty word sequences of the transcripts in `path`."""
    sentences = [words_of(t) for t in read_transcripts(path, fmt)]
    return [s for s in sentences if s]


def build_lm(
    text: Path,
    out: Path,
    order: int = 5,
    fmt: str = "auto",
    keep_spaces: bool = False,
    units: Path | None = None,
    dev_text: Path | None = None,
    log=print,
) -> dict:
    """Build `out` (ARPA; ``.gz`` compresses) from the transcripts in `text`; return the summary.

    `units`: the acoustic model's units file; every unit the model can emit becomes an LM word
    (its special tokens aside), so none of them is scored as ``<unk>``. When the units are
    sentencepiece pieces (``bpe.model`` beside the file), the LM's words are the pieces of each
    transcript, the tokens the model emits and the LM decoder scores.
    """
    if not 1 <= order <= 9:
        raise AsrError(f"LM order must be 1..9, got {order}")
    out = Path(out)
    words_of = _word_splitter(units, keep_spaces)
    sentences = _read_sentences(Path(text), fmt, words_of)
    if not sentences:
        raise AsrError(f"{text}: no transcripts to build a language model from")
    vocabulary: list[str] = []
    if units is not None:
        skip = {BLANK, UNK, UNIT_EOS}
        vocabulary = [u for u in CharTokenizer.from_file(Path(units)).units if u not in skip]
    model, report = build_kneser_ney(sentences, order, vocabulary)
    write_arpa(model, out)
    corpus_text = out.with_name(out.name.removesuffix(".gz").removesuffix(".arpa") + ".txt")
    atomic_write_text(corpus_text, "".join(" ".join(s) + "\n" for s in sentences))

    summary: dict = {
        "arpa": str(out),
        "text": str(corpus_text),
        "order": order,
        "sentences": report.sentences,
        "tokens": report.tokens,
        "vocabulary": report.vocabulary,
        "ngrams": report.ngram_counts,
        "discounts": [asdict(d) for d in report.discounts],
    }
    if any(d.fallback for d in report.discounts):
        log("note: too little text to estimate some discounts; used the fallback 0.5/1.0/1.5 "
            "(as lmplz --discount_fallback)")
    if dev_text is not None:
        dev = _read_sentences(Path(dev_text), fmt, words_of)
        summary["dev_perplexity"] = perplexity(NgramScorer(model), dev)
        unigram, _ = build_kneser_ney(sentences, 1, vocabulary)
        summary["dev_perplexity_unigram"] = perplexity(NgramScorer(unigram), dev)
    summary_path = out.with_name(corpus_text.stem + ".json")
    atomic_write_text(summary_path, json.dumps(summary, ensure_ascii=False, indent=1) + "\n")
    counts = ", ".join(f"{n}-grams {c}" for n, c in enumerate(report.ngram_counts, 1))
    log(f"{out}: order {order}, {report.sentences} sentences, vocabulary {report.vocabulary}; {counts}")
    if "dev_perplexity" in summary:
        ppl, ppl1 = summary["dev_perplexity"], summary["dev_perplexity_unigram"]
        log(f"dev perplexity {ppl:.2f} (unigram {ppl1:.2f})")
        if not math.isfinite(ppl):
            raise AsrError("dev perplexity is not finite; the LM is broken")
    return summary
