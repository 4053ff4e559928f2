"""Thin ctypes binding to libespeak-ng (shipped by the ``espeakng-loader`` wheel).

Used by the synthetic demo corpus (:mod:`paddle_asr.data.corpora.demo`) for two
things: reading Mandarin text into espeak's own phoneme strings (so the text
design can reason about what will actually be *spoken*) and synthesising int16
audio in synchronous mode.

Determinism pitfall (measured): libespeak-ng keeps hidden static state between
utterances that survives even ``espeak_Terminate`` + ``espeak_Initialize`` and
reseeding; the same text synthesised twice in one process gives different
samples (and often lengths), and synthesising a fixed "priming" utterance
first does not reset it.  Output is, however, a pure function of
the sequence of calls made since the process started.  So callers that need
byte-identical audio must synthesise a fixed list of utterances, in a fixed
order, in a *fresh* process (see ``demo._synth_speaker``), and reseed espeak's
PRNG (``espeak_ng_SetRandSeed``) and libc's ``rand`` before every utterance.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import re
from pathlib import Path

import numpy as np

# espeak_AUDIO_OUTPUT / espeak_POSITION_TYPE / flags / espeak_PARAMETER values
# from speak_lib.h (stable ABI since espeak 1.x).
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_ESPEAK_CHARS_UTF8 = 1
_ESPEAK_RATE, _ESPEAK_VOLUME, _ESPEAK_PITCH, _ESPEAK_RANGE = 1, 2, 3, 4
ESPEAK_SAMPLE_RATE = 22050

_MARKS = re.compile(r"[ '_|,%=]")

_CALLBACK_T = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


class ESpeak:
    """Process-wide handle to libespeak-ng (the C library is a singleton)."""

    _instance: ESpeak | None = None

    @classmethod
    def get(cls, data_path: str | Path | None = None) -> ESpeak:
        """The process's espeak, on `data_path` (an espeak-ng-data directory; None: the installed one,
        or whichever the first call chose)."""
        if cls._instance is None:
            cls._instance = cls(data_path)
        elif data_path is not None and Path(data_path) != cls._instance.data_path:
            raise RuntimeError(f"espeak already runs on {cls._instance.data_path} in this process, not {data_path}")
        return cls._instance

    def __init__(self, data_path: str | Path | None = None) -> None:
        import espeakng_loader  # imported lazily: only needed for the demo corpus

        self.data_path = Path(data_path or espeakng_loader.get_data_path())
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_CALLBACK_T]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
            ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_TextToPhonemes.argtypes = [
            ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int
        ]
        lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_ng_SetRandSeed.restype = None
        self._lib = lib
        self._libc = ctypes.CDLL(ctypes.util.find_library("c"))
        sr = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, str(self.data_path).encode(), 0)
        if sr != ESPEAK_SAMPLE_RATE:
            raise RuntimeError(f"espeak_Initialize failed or unexpected rate: {sr}")
        self._chunks: list[np.ndarray] = []
        # Keep a reference to the ctypes callback, or it is garbage-collected
        # while C still points at it.
        self._callback = _CALLBACK_T(self._collect)
        lib.espeak_SetSynthCallback(self._callback)
        self._voice: str | None = None

    def _collect(self, wav, num_samples: int, _events) -> int:
        if num_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        return 0  # 0 = continue synthesis

    def set_voice(self, name: str) -> None:
        if name != self._voice:
            if self._lib.espeak_SetVoiceByName(name.encode()) != 0:
                raise ValueError(f"espeak voice not found: {name}")
            self._voice = name

    def phonemes(self, text: str, voice: str = "cmn") -> str:
        """espeak's ASCII phoneme string for ``text`` exactly as it would speak it."""
        self.set_voice(voice)
        buf = ctypes.create_string_buffer(text.encode("utf-8"))
        ptr = ctypes.c_void_p(ctypes.addressof(buf))
        parts = []
        # espeak_TextToPhonemes consumes one clause per call and advances ptr
        # (set to NULL at the end of the text).
        while ptr.value:
            out = self._lib.espeak_TextToPhonemes(ctypes.byref(ptr), _ESPEAK_CHARS_UTF8, 0)
            if out:
                parts.append(out.decode("utf-8", "replace"))
        return " ".join(parts)

    def synthesize(self, text: str, voice: str, *, rate: int, pitch: int, pitch_range: int,
                   seed: int) -> np.ndarray:
        """Synthesise ``text`` (UTF-8) and return int16 samples at 22,050 Hz."""
        self.set_voice(voice)
        # Parameters are set after the voice (selecting a voice may reset them).
        self._lib.espeak_SetParameter(_ESPEAK_RATE, int(rate), 0)
        self._lib.espeak_SetParameter(_ESPEAK_PITCH, int(pitch), 0)
        self._lib.espeak_SetParameter(_ESPEAK_RANGE, int(pitch_range), 0)
        self._lib.espeak_SetParameter(_ESPEAK_VOLUME, 100, 0)
        seed &= 0x7FFFFFFF
        self._lib.espeak_ng_SetRandSeed(seed)
        self._libc.srand(ctypes.c_uint(seed))  # klatt noise still uses libc rand()
        self._chunks = []
        data = text.encode("utf-8") + b"\0"
        err = self._lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0,
                                     _ESPEAK_CHARS_UTF8, None, None)
        if err != 0:
            raise RuntimeError(f"espeak_Synth failed ({err}) for {text!r}")
        if not self._chunks:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate(self._chunks).astype(np.int16, copy=False)


def toneless(phonemes: str) -> str | None:
    """Toneless form of an espeak cmn ASCII phoneme string, or None if not pure cmn.

    espeak writes a tone number (55, 35, 214, 51, 11, ...) inside each Mandarin
    syllable, after the vowel and before a nasal coda (``z.'@35n`` = ren2), so
    syllable boundaries are not recoverable from the string alone; comparing
    toneless *strings* is enough to check that a word is read as the
    concatenation of its characters.  Stress marks and word separators are
    dropped.  A language switch such as ``(en)`` means espeak fell back to
    another language (e.g. spelling an unknown word), which we reject.
    """
    cleaned = _MARKS.sub("", phonemes)
    if not cleaned or "(" in cleaned or not re.search(r"\d", cleaned):
        return None
    return re.sub(r"\d+", "", cleaned)


def syllable_count(phonemes: str) -> int:
    """Number of tone-bearing syllables (= tone numbers) in an espeak cmn string."""
    return len(re.findall(r"\d+", _MARKS.sub("", phonemes)))


def variant_names() -> list[str]:
    """All voice variants shipped in espeak-ng-data/voices/!v."""
    return sorted(p.name for p in (ESpeak.get().data_path / "voices" / "!v").iterdir())


# Random voices: espeak-ng variant files whose formants are drawn anew. F1-F5 frequencies move
# independently (percent of the language's own), so vowels land where no listed variant puts them;
# each of F3-F5 is nearly silenced with some chance, as several listed variants silence theirs
# (Andy, Jacky, Lee). The ranges were set after finding what the demos' unseen variant Lee lacks (F2
# at 80 % with nothing above it; docs/demo_corpora.md), so they cover it. Voices from the same draws
# are the same bytes: rng decides everything.
_RANDOM_FORMANT_FREQ = ((80, 120), (75, 125), (85, 115), (85, 115), (85, 115))
_RANDOM_FORMANT_HEIGHT = (70, 130)
_RANDOM_FORMANT_SILENT = 0.35  # chance for each of F3-F5
_RANDOM_SILENT_HEIGHT = (0, 15)
_RANDOM_PITCH_BASE, _RANDOM_PITCH_SPAN = (70, 200), (25, 80)  # Hz
# espeak-ng keeps the languages and variants it finds in a list of 349 (N_VOICES_LIST - 1 in its
# voices.c) and drops the rest with a warning, so a variant past that cannot be selected.
_ESPEAK_MAX_VOICES = 349


def random_variant(name: str, rng: np.random.Generator) -> str:
    """The text of an espeak-ng variant file (voices/!v) named `name`, with drawn pitch and formants."""
    base = rng.uniform(*_RANDOM_PITCH_BASE)
    lines = ["language variant", f"name {name}", "", f"pitch {base:.0f} {base + rng.uniform(*_RANDOM_PITCH_SPAN):.0f}"]
    for k, freq_range in enumerate(_RANDOM_FORMANT_FREQ, start=1):
        freq, height = rng.uniform(*freq_range), rng.uniform(*_RANDOM_FORMANT_HEIGHT)
        if k >= 3 and rng.random() < _RANDOM_FORMANT_SILENT:
            height = rng.uniform(*_RANDOM_SILENT_HEIGHT)
        lines.append(f"formant {k} {freq:.0f} {height:.0f} 100")
    return "\n".join(lines) + "\n"


def random_voices(count: int, seed: int) -> dict[str, str]:
    """`count` random variants {name: variant file text}, named random00, random01, ..."""
    rng = np.random.default_rng([seed, 3])
    names = [f"random{k:02d}" for k in range(count)]
    return {name: random_variant(name, rng) for name in names}


def data_with_variants(out: Path, variants: dict[str, str]) -> Path:
    """An espeak-ng-data directory at `out`: the installed one, linked rather than copied, with
    `variants` ({name: variant file text}) added to voices/!v. Returns `out`."""
    import espeakng_loader

    base = Path(espeakng_loader.get_data_path())
    listed = sum(1 for p in (base / "lang").rglob("*") if p.is_file()) + len(list((base / "voices" / "!v").iterdir()))
    if listed + len(variants) > _ESPEAK_MAX_VOICES:
        raise ValueError(f"{len(variants)} random voices are too many: espeak-ng lists at most {_ESPEAK_MAX_VOICES} "
                         f"voices and {base} has {listed}; ask for at most {_ESPEAK_MAX_VOICES - listed}")
    _link_all_but(base, out, "voices")
    _link_all_but(base / "voices", out / "voices", "!v")
    _link_all_but(base / "voices" / "!v", out / "voices" / "!v", None)
    for name, text in variants.items():
        (out / "voices" / "!v" / name).write_text(text, encoding="utf-8")
    return out


def _link_all_but(src: Path, dst: Path, keep_out: str | None) -> None:
    dst.mkdir(parents=True)
    for entry in sorted(src.iterdir()):
        if entry.name != keep_out:
            (dst / entry.name).symlink_to(entry)


def resample_to_16k(samples: np.ndarray) -> np.ndarray:
    """22,050 Hz int16 -> 16,000 Hz float64.

    16000 / 22050 = 320 / 441 exactly (note: 160/441 would give 8 kHz).
    """
    from scipy.signal import resample_poly

    return resample_poly(samples.astype(np.float64), 320, 441)


def render_utterance(samples_22k: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Turn raw espeak output into a recording-like 16 kHz int16 signal.

    espeak starts and stops speaking exactly at the first/last sample and its
    level differs ~10x between variants; real corpora have a little silence
    around each utterance, a roughly normalised level and a noise floor.  So:
    random level (-26..-18 dBFS RMS), 0.15-0.40 s of padding each side and a
    faint white-noise floor 35-50 dB below speech (which also keeps log-mel
    features away from log(0)).  All randomness comes from ``rng``.
    """
    x = resample_to_16k(samples_22k)
    rms = float(np.sqrt(np.mean(x**2))) if x.size else 0.0
    if rms < 1.0:
        raise ValueError("espeak produced silence")
    target_rms = 32768.0 * 10 ** (rng.uniform(-26.0, -18.0) / 20)
    x *= target_rms / rms
    peak = float(np.abs(x).max())
    if peak > 0.95 * 32767:  # limit instead of clipping
        x *= 0.95 * 32767 / peak
    lead, trail = (int(rng.uniform(0.15, 0.40) * 16000) for _ in range(2))
    out = np.concatenate([np.zeros(lead), x, np.zeros(trail)])
    noise_std = target_rms * 10 ** (-rng.uniform(35.0, 50.0) / 20)
    out += rng.normal(0.0, noise_std, out.size)
    return np.clip(np.round(out), -32768, 32767).astype(np.int16)
