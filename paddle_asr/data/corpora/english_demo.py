"""Deterministic synthetic English corpus in LibriSpeech's exact on-disk layout.

The English twin of :mod:`paddle_asr.data.corpora.demo`: it lets the LibriSpeech recipe (FLAC
chapters, sentencepiece units, WER) run every stage offline on a laptop. Speech is synthesised with
espeak-ng's English voices (``espeakng-loader`` wheel) through
:mod:`paddle_asr.data.corpora.espeak_synth`.

Layout written (nothing else, apart from the hidden ``.done`` completion record)::

    <out_dir>/LibriSpeech/<subset>/<SPEAKER>/<CHAPTER>/<SPEAKER>-<CHAPTER>-<UTT>.flac
    <out_dir>/LibriSpeech/<subset>/<SPEAKER>/<CHAPTER>/<SPEAKER>-<CHAPTER>.trans.txt

with subsets train-clean-100, dev-clean, test-clean and test-unseen-voices, 16 kHz 16-bit mono FLAC,
upper-case transcripts, and one file per subset without a transcript line (as stage 0 must report).

Text design: sentences come from a small grammar over a few hundred common words, so they read as
English and a small model can learn them. Words that espeak pronounces alike (to/two/too,
there/their) would put a floor under WER, so only one word per pronunciation (stress marks
ignored) is kept. Test and dev speakers use voice variants never heard in training; the speakers of
test-unseen-voices use variants no other subset has, drawn at random (fixed seed), and sentences of
their own. That subset comes from random generators of its own, after the others, so dev and test
are byte for byte what they are without it; training takes the pool variants its draw leaves.

Usage: ``python -m paddle_asr.data.corpora.english_demo --out_dir corpus``
"""

from __future__ import annotations

import argparse
import functools
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from paddle_asr.data.corpora.demo import _EXTRA_VOICES as _MANDARIN_EXTRA_VOICES
from paddle_asr.data.corpora.espeak_synth import ESpeak, random_voices, render_utterance
from paddle_asr.data.corpora.generated import partial_dir, publish, reuse_complete, synthesise_speakers

GENERATOR_VERSION = 4
UNSEEN = "test-unseen-voices"
SUBSETS = ("train-clean-100", "dev-clean", "test-clean", UNSEEN)
_ACCENTS = ["en-US", "en", "en-GB-x-rp", "en-GB-scotland", "en-029", "en-US-nyc", "en-GB-x-gbclan", "en-GB-x-gbcwmd"]
# Voice variants as the Mandarin demo chose them (demo.py explains the exclusions); test and dev
# variants are never used in training. The demo trains 36 speakers on the 21 training variants and the
# 15 of the unseen pool (below) that its unseen-voice draw leaves, 60 utterances each, and 30 speakers
# in random voices (espeak_synth.random_variant), 31 each; the recipe's config records what that gained.
_TEST_VARIANTS = ["f4", "m6", "klatt4"]
_DEV_VARIANTS = ["f3", "m4"]
_TRAIN_VARIANTS = ["m1", "m2", "m3", "m5", "m7", "m8", "f1", "f2", "f5", "klatt3", "klatt5", "adam", "Annie",
                   "belinda", "edward", "linda", "david", "steph", "Alex", "aunty", "Andy"]
# The usable variants none of the lists above has; the unseen-voice speakers draw theirs from these,
# and training takes the rest. A variant file changes only the voice, never the language, and all 18
# speak English with a normal length and as much voicing as the training variants
# (tests/test_english_demo_corpus.py measures them).
_UNSEEN_POOL = [v for v in _MANDARIN_EXTRA_VOICES if v not in _TRAIN_VARIANTS + _DEV_VARIANTS + _TEST_VARIANTS]
# Real LibriSpeech ids (1688 opens test-other). Speaker k of a subset is first + 17 k, and the firsts
# differ modulo 17, so no two subsets can share a speaker, whatever the counts.
_FIRST_SPEAKER = {"train-clean-100": 103, "dev-clean": 84, "test-clean": 61, UNSEEN: 1688}
_SENT_WORDS = (4, 12)

# A small grammar: each category is a list of common words. Sentences are NP VP (PP) patterns.
WORDS = {
    "det": "THE A THIS THAT EVERY EACH ONE SOME HIS HER OUR MY YOUR".split(),
    "adj": ("OLD YOUNG LITTLE BIG SMALL LONG SHORT GOOD BAD HAPPY SAD DARK BRIGHT COLD WARM QUIET LOUD GREEN "
            "BLUE RED WHITE BLACK GOLDEN SILVER EMPTY FULL HEAVY SOFT HARD STRANGE FAMOUS ANGRY GENTLE CLEVER "
            "PROUD TIRED BUSY SIMPLE SECRET DISTANT CAREFUL RICH POOR FRESH").split(),
    "noun": ("MAN WOMAN CHILD BOY GIRL FRIEND FATHER MOTHER BROTHER SISTER DOCTOR TEACHER FARMER KING QUEEN "
             "SOLDIER CAPTAIN DOG CAT HORSE BIRD FISH HOUSE GARDEN RIVER MOUNTAIN FOREST CITY VILLAGE ROAD BRIDGE "
             "SHIP BOAT TRAIN LETTER BOOK STORY SONG WINDOW DOOR TABLE CHAIR CANDLE LAMP BOTTLE BASKET APPLE "
             "BREAD CHEESE COFFEE MORNING EVENING WINTER SUMMER SPRING STORM CLOUD STONE FIELD ISLAND MARKET "
             "CHURCH SCHOOL OFFICE KITCHEN PICTURE MIRROR CLOCK KEY COAT HAT SHOE RING PENCIL PAPER MONEY "
             "PRINCE FOX WOLF BEAR LION TIGER MOUSE RABBIT DRAGON GIANT WIZARD MERCHANT SAILOR PILOT").split(),
    "name": ("JOHN MARY PETER ANNA THOMAS EMMA GEORGE ALICE HENRY LUCY ROBERT HELEN CHARLES MARTHA "
             "WILLIAM SARAH JAMES LAURA DAVID RACHEL").split(),
    "pron": "HE SHE THEY WE I YOU IT NOBODY SOMEBODY EVERYONE".split(),
    "vt": ("SAW FOUND TOOK GAVE BROUGHT CARRIED OPENED CLOSED PAINTED WATCHED FOLLOWED CALLED HELPED MET "
           "VISITED CAUGHT BOUGHT SOLD BUILT LOVED HATED FORGOT REMEMBERED KEPT LEFT PUSHED PULLED CLEANED "
           "DROPPED LIFTED WASHED FIXED LOST WANTED NEEDED ASKED TAUGHT").split(),
    "vi": ("SLEPT LAUGHED CRIED WAITED SMILED SHOUTED DANCED SANG WALKED RAN SWAM JUMPED ARRIVED STAYED "
           "WORKED PLAYED LISTENED SPOKE STOPPED STARTED RETURNED VANISHED FELL ROSE").split(),
    "prep": "IN ON UNDER NEAR BEHIND BESIDE INSIDE ACROSS ALONG AROUND BEYOND WITH FROM TOWARD".split(),
    "adv": ("SLOWLY QUICKLY QUIETLY SUDDENLY TODAY YESTERDAY TONIGHT AGAIN ALWAYS NEVER OFTEN SOMETIMES "
            "SOON TOGETHER ALONE HAPPILY CAREFULLY").split(),
    "and": ["AND", "BUT", "SO", "BECAUSE", "WHILE", "WHEN"],
    "contr": ["DIDN'T", "COULDN'T", "WOULDN'T"],
    "vbase": "STAY LISTEN ANSWER MOVE WAKE REST".split(),
}


def _pronunciation(es: ESpeak, word: str) -> str:
    return re.sub(r"[',\s]", "", es.phonemes(word.lower(), voice="en-US"))


@functools.lru_cache(maxsize=1)
def design_words() -> dict[str, list[str]]:
    """The grammar's words with homophones removed: one word per pronunciation, first listed wins."""
    es = ESpeak.get()
    seen: set[str] = set()
    out: dict[str, list[str]] = {}
    for category, words in WORDS.items():
        kept = []
        for word in words:
            ph = _pronunciation(es, word)
            if ph and ph not in seen:
                seen.add(ph)
                kept.append(word)
        out[category] = kept
    return out


def _noun_phrase(words: dict[str, list[str]], rng: np.random.Generator) -> list[str]:
    r = rng.random()
    if r < 0.15:
        return [str(rng.choice(words["name"]))]
    if r < 0.25:
        return [str(rng.choice(words["pron"]))]
    phrase = [str(rng.choice(words["det"]))]
    if rng.random() < 0.5:
        phrase.append(str(rng.choice(words["adj"])))
    return phrase + [str(rng.choice(words["noun"]))]


def _object_phrase(words: dict[str, list[str]], rng: np.random.Generator) -> list[str]:
    phrase = _noun_phrase(words, rng)
    return phrase if phrase[0] not in words["pron"] else [str(rng.choice(words["det"])), str(rng.choice(words["noun"]))]


def _clause(words: dict[str, list[str]], rng: np.random.Generator) -> list[str]:
    clause = _noun_phrase(words, rng)
    r = rng.random()
    if r < 0.1:
        clause += [str(rng.choice(words["contr"])), str(rng.choice(words["vbase"]))]
    elif r < 0.55:
        clause += [str(rng.choice(words["vt"]))] + _object_phrase(words, rng)
    elif r < 0.85:
        clause.append(str(rng.choice(words["vi"])))
    else:
        clause += ["WAS", str(rng.choice(words["adj"]))]
    if rng.random() < 0.45:
        clause += [str(rng.choice(words["prep"]))] + _object_phrase(words, rng)
    if rng.random() < 0.3:
        clause.append(str(rng.choice(words["adv"])))
    return clause


def make_sentences(n: int, rng: np.random.Generator, exclude: frozenset[str] = frozenset()) -> list[str]:
    """``n`` distinct sentences of 4-12 words from the grammar, none of them in `exclude`."""
    words = design_words()
    out: list[str] = []
    seen: set[str] = set(exclude)
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 50 * n + 100:
            raise RuntimeError("could not build enough distinct sentences")
        sent = _clause(words, rng)
        if len(sent) < 7 and rng.random() < 0.5:
            sent += [str(rng.choice(words["and"]))] + _clause(words, rng)
        text = " ".join(sent)
        if not _SENT_WORDS[0] <= len(sent) <= _SENT_WORDS[1] or text in seen:
            continue
        seen.add(text)
        out.append(text)
    return out


def _synth_speaker(job: dict) -> dict[str, float]:
    """Synthesise one speaker's chapters as FLAC (in a fresh process: see demo._synth_speaker)."""
    import soundfile as sf

    es = ESpeak.get(job.get("espeak_data"))
    durations: dict[str, float] = {}
    for utt in job["utts"]:
        samples = es.synthesize(utt["text"].lower(), job["voice"], rate=utt["rate"], pitch=utt["pitch"],
                                pitch_range=utt["range"], seed=utt["seed"])
        audio = render_utterance(samples, np.random.default_rng(utt["seed"]))
        path = Path(job["folder"]) / utt["chapter"] / f"{utt['id']}.flac"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, audio, 16000, format="FLAC", subtype="PCM_16")
        durations[utt["id"]] = audio.size / 16000
    return durations


def _unseen_variants(count: int, seed: int) -> list[str]:
    """`count` variants of `_UNSEEN_POOL`, drawn at random with a generator of their own."""
    if count > len(_UNSEEN_POOL):
        raise ValueError(f"only {len(_UNSEEN_POOL)} espeak voice variants are left for {count} unseen-voice speakers")
    picked = np.random.default_rng([seed, 1]).choice(len(_UNSEEN_POOL), count, replace=False)
    return [_UNSEEN_POOL[i] for i in picked]


def _plan_speakers(subsets: tuple[str, ...], counts: dict[str, int], variants: dict[str, list[str]],
                   per_speaker: dict[str, int], sentences: Iterator[str], rng: np.random.Generator, tmp: Path,
                   random_utts: dict[str, int]
                   ) -> tuple[list[dict], dict[str, tuple[str, str, str, str]], list[str], dict[str, str]]:
    """The synthesis job of every speaker of `subsets`, subset by subset; returns the jobs, the
    transcripts (id -> subset, speaker, chapter, text), the ids deliberately left without a
    transcript, and each speaker's voice. The random voices ({name: utterances}) are training
    speakers after the listed ones."""
    jobs, transcripts, untranscribed, voices = [], {}, [], {}
    for subset in subsets:
        subset_ids = []
        listed = [variants[subset][k % len(variants[subset])] for k in range(counts[subset])]
        extra = list(random_utts) if subset == SUBSETS[0] else []
        for k, variant in enumerate(listed + extra):
            speaker = _FIRST_SPEAKER[subset] + 17 * k
            # Speaker = accent x voice variant + its own base pitch, range and rate; the variant
            # pools of the subsets are disjoint, so test voices are unheard in training.
            voice = f"{_ACCENTS[(k * 3 + len(subset)) % len(_ACCENTS)]}+{variant}"
            voices[str(speaker)] = voice
            utts = _speaker_utterances(speaker, random_utts.get(variant, per_speaker[subset]), sentences, rng)
            for utt in utts:
                transcripts[utt["id"]] = (subset, str(speaker), utt["chapter"], utt["text"])
                subset_ids.append(utt["id"])
            jobs.append({"voice": voice, "utts": utts, "folder": str(tmp / subset / str(speaker))})
        # Like the Mandarin demo: one file per subset has no transcript line, on purpose.
        if subset_ids:
            untranscribed.append(subset_ids[int(rng.integers(len(subset_ids)))])
    return jobs, transcripts, untranscribed, voices


def _plan_corpus(counts: dict[str, int], per_speaker: dict[str, int], seed: int, tmp: Path,
                 random_utts: dict[str, int]
                 ) -> tuple[list[dict], dict[str, tuple[str, str, str, str]], list[str], dict[str, str]]:
    """`_plan_speakers` of every subset: train, dev and test from the seed's generator, then the
    unseen-voice subset from generators of its own, with sentences none of the others has. Training
    takes the listed variants, then the pool's that the unseen voices left, then the random voices."""
    unseen_variants = _unseen_variants(counts[UNSEEN], seed)
    train = _TRAIN_VARIANTS + [v for v in _UNSEEN_POOL if v not in unseen_variants]
    variants = {"train-clean-100": train[:counts["train-clean-100"]], "dev-clean": _DEV_VARIANTS,
                "test-clean": _TEST_VARIANTS, UNSEEN: unseen_variants}
    rng = np.random.default_rng(seed)
    main = SUBSETS[:3]
    sentences = make_sentences(sum(counts[s] * per_speaker[s] for s in main) + sum(random_utts.values()), rng)
    planned = _plan_speakers(main, counts, variants, per_speaker, iter(sentences), rng, tmp, random_utts)
    unseen_rng = np.random.default_rng([seed, 2])
    unseen = make_sentences(counts[UNSEEN] * per_speaker[UNSEEN], unseen_rng, exclude=frozenset(sentences))
    extra = _plan_speakers((UNSEEN,), counts, variants, per_speaker, iter(unseen), unseen_rng, tmp, {})
    return (planned[0] + extra[0], {**planned[1], **extra[1]}, planned[2] + extra[2], {**planned[3], **extra[3]})


def _speaker_utterances(speaker: int, utts_per_speaker: int, sentences: Iterator[str],
                        rng: np.random.Generator) -> list[dict]:
    """One speaker's utterances to synthesise, in one chapter, or two from 20 utterances on."""
    base_pitch, base_range, base_rate = rng.uniform(35, 65), rng.uniform(35, 75), rng.uniform(150, 185)
    chapters = [str(1000 + 37 * speaker + c) for c in range(1 if utts_per_speaker < 20 else 2)]
    utts = []
    per_chapter = {c: 0 for c in chapters}
    for u in range(utts_per_speaker):
        chapter = chapters[u * len(chapters) // utts_per_speaker]
        uid = f"{speaker}-{chapter}-{per_chapter[chapter]:04d}"
        per_chapter[chapter] += 1
        text = next(sentences)
        utts.append({"id": uid, "chapter": chapter, "text": text,
                     "rate": int(round(base_rate * rng.uniform(0.88, 1.12))),
                     "pitch": int(np.clip(round(base_pitch + rng.uniform(-10, 10)), 0, 100)),
                     "range": int(np.clip(round(base_range + rng.uniform(-10, 10)), 0, 100)),
                     "seed": int(rng.integers(1, 2**31 - 1))})
    return utts


def _write_transcripts(tmp: Path, transcripts: dict[str, tuple[str, str, str, str]], untranscribed: list[str]) -> None:
    """One ``<speaker>-<chapter>.trans.txt`` per chapter, as LibriSpeech has."""
    chapters: dict[tuple[str, str, str], list[str]] = {}
    for uid, (subset, speaker, chapter, text) in sorted(transcripts.items()):
        if uid not in untranscribed:
            chapters.setdefault((subset, speaker, chapter), []).append(f"{uid} {text}\n")
    for (subset, speaker, chapter), lines in chapters.items():
        path = tmp / subset / speaker / chapter / f"{speaker}-{chapter}.trans.txt"
        path.write_text("".join(lines), encoding="utf-8")


def generate_english_demo(out_dir: Path, *, seed: int = 20261122, num_train_speakers: int = 36,
                          num_dev_speakers: int = 2, num_test_speakers: int = 3, num_unseen_speakers: int = 3,
                          utts_per_speaker: int = 110, train_utts_per_speaker: int | None = 60,
                          num_random_voices: int = 30, random_voice_utts: int = 31, force: bool = False,
                          log: Callable[[str], None] = print, num_workers: int = 2) -> dict:
    """Generate (or reuse) the corpus under ``out_dir/LibriSpeech``; return a summary.

    `num_unseen_speakers` speak test-unseen-voices (none: no such subset). A training speaker reads
    `train_utts_per_speaker` utterances (None: `utts_per_speaker`, as every other speaker reads).
    `num_random_voices` more training speakers read `random_voice_utts` each, in espeak variants whose
    formants are drawn at random (espeak_synth.random_variant)."""
    out_dir = Path(out_dir)
    root = out_dir / "LibriSpeech"
    counts = {"train-clean-100": num_train_speakers, "dev-clean": num_dev_speakers, "test-clean": num_test_speakers,
              UNSEEN: num_unseen_speakers}
    per_speaker = {s: utts_per_speaker for s in SUBSETS}
    per_speaker["train-clean-100"] = utts_per_speaker if train_utts_per_speaker is None else train_utts_per_speaker
    if min(counts[s] for s in SUBSETS[:3]) < 1 or num_unseen_speakers < 0 or min(per_speaker.values()) < 2 \
            or num_random_voices < 0 or random_voice_utts < 2:
        raise ValueError("need >= 1 speaker in train, dev and test, >= 0 random voices and >= 2 utterances per speaker")
    params = {"generator_version": GENERATOR_VERSION, "seed": seed, "speakers": counts,
              "utts_per_speaker": per_speaker, "random_voices": [num_random_voices, random_voice_utts]}
    reused = reuse_complete(root, params, force, log, "english demo")
    if reused is not None:
        return reused

    start = time.time()
    tmp = partial_dir(root)
    try:
        random = random_voices(num_random_voices, seed)
        jobs, transcripts, untranscribed, voices = _plan_corpus(counts, per_speaker, seed, tmp,
                                                                dict.fromkeys(random, random_voice_utts))
        durations = synthesise_speakers(_synth_speaker, jobs, num_workers, log, "english demo", start, random, tmp)
        _write_transcripts(tmp, transcripts, untranscribed)
        words = design_words()
        summary = {
            "path": str(root),
            "speakers": {**counts, SUBSETS[0]: counts[SUBSETS[0]] + num_random_voices},
            "utterances": {s: counts[s] * per_speaker[s] + (s == SUBSETS[0]) * num_random_voices * random_voice_utts
                           for s in SUBSETS},
            "speaker_voices": voices,
            "total_seconds": round(sum(durations.values()), 2),
            "vocabulary_words": sum(len(v) for v in words.values()),
            "untranscribed_ids": sorted(untranscribed),
            "generation_seconds": round(time.time() - start, 1),
        }
        publish(tmp, root, params, summary)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"[english demo] wrote {root}: {summary['utterances']} utterances, {summary['total_seconds'] / 3600:.2f} h, "
        f"{summary['vocabulary_words']} words, in {summary['generation_seconds']}s")
    return {**summary, "reused": False}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out_dir", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=20261122)
    parser.add_argument("--num_unseen_speakers", type=int, default=3, help="speakers of test-unseen-voices")
    parser.add_argument("--utts_per_speaker", type=int, default=110, help="of each dev, test and unseen-voice speaker")
    parser.add_argument("--train_utts_per_speaker", type=int, default=60)
    parser.add_argument("--num_random_voices", type=int, default=30, help="training speakers in random voices")
    parser.add_argument("--random_voice_utts", type=int, default=31)
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument("--force", action="store_true", help="regenerate even if complete")
    args = parser.parse_args(argv)
    summary = generate_english_demo(args.out_dir, seed=args.seed, num_unseen_speakers=args.num_unseen_speakers,
                                    utts_per_speaker=args.utts_per_speaker,
                                    train_utts_per_speaker=args.train_utts_per_speaker,
                                    num_random_voices=args.num_random_voices, random_voice_utts=args.random_voice_utts,
                                    force=args.force,
                                    num_workers=args.num_workers)
    log_summary(summary)
    return 0


def log_summary(summary: dict, log: Callable[[str], None] = print) -> None:
    """The speakers' voices and the files left untranscribed, from `generate_english_demo`'s summary."""
    log(f"[english demo] voices: {', '.join(f'{s}={v}' for s, v in sorted(summary['speaker_voices'].items()))}")
    log(f"[english demo] no transcript on purpose for {', '.join(summary['untranscribed_ids'])}")


if __name__ == "__main__":
    raise SystemExit(main())
