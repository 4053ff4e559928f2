"""Jittered espeak voices: the demo corpora's training utterances each get their own vocal tract."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np

from paddle_asr.data.corpora.espeak_synth import DISPLACED_FORMANT_PROB, ESpeak, jittered_variant, utterance_voice

_FORMANT = re.compile(r"^formant (\d)\s+(\d+)\s+(\d+)\s+(\d+)", re.M)


def _formants(text: str) -> dict[int, tuple[int, int, int]]:
    return {int(k): (int(f), int(h), int(w)) for k, f, h, w in _FORMANT.findall(text)}


def test_jittered_variant_keeps_the_voice_and_redraws_its_formants() -> None:
    base = (ESpeak.get().data_path / "voices" / "!v" / "f1").read_text(encoding="utf-8")
    base_formants = _formants(base)  # f1: all nine formants, e.g. formant 1 120 80 180
    assert len(base_formants) == 9
    draws = [jittered_variant("f1", np.random.default_rng(s)) for s in range(300)]
    assert jittered_variant("f1", np.random.default_rng(4)) == draws[4]  # a function of the generator
    assert len(set(draws)) == 300
    displaced = np.zeros(9)
    for text in draws:
        assert "pitch 140 200" in text and "flutter 8" in text  # the rest of the variant is kept
        assert text.count("\nformant ") == 9 and text.count("\nname ") == 1
        for k, (freq, height, width) in _formants(text).items():
            f0, h0, w0 = base_formants[k]
            if abs(freq - f0) > 0.162 * f0 + 1:  # beyond the +-15 % scaling (rounded)
                displaced[k] += 1
                assert k >= 3 and 0 <= freq <= 300 and 0 <= height <= 150
            elif k < 3:  # from F3 up, a displaced draw may land within +-15 % with any strength
                assert h0 / 2 - 1 <= height <= 2 * h0 + 1
            assert w0 * 0.70 - 1 <= width <= w0 * 1.42 + 1
    assert displaced[:3].sum() == 0
    # A displaced draw can land within +-15 % by chance, so the count sits a little under the rate.
    assert 0.08 < displaced[3:].sum() / (6 * 300) <= DISPLACED_FORMANT_PROB + 0.03


_SYNTH = """
import hashlib, json, sys
import numpy as np
from paddle_asr.data.corpora.espeak_synth import ESpeak, utterance_voice
es = ESpeak.get()
out = {}
for jitter in (False, True):
    utt = {"seed": 77, "jitter": jitter}
    voice = utterance_voice(es, "cmn+m1", utt)
    x = es.synthesize("今天天气很好", voice, rate=170, pitch=50, pitch_range=50, seed=77).astype(float)
    spec = np.abs(np.fft.rfft(x[: 16384] * np.hanning(16384)))
    out[str(jitter)] = [voice, hashlib.md5(x.tobytes()).hexdigest(), spec[::64].tolist()]
print(json.dumps(out))
"""


def test_a_jittered_utterance_is_spoken_by_another_vocal_tract_reproducibly() -> None:
    """In fresh processes, as the corpus workers synthesise (espeak keeps state between calls)."""
    runs = [json.loads(subprocess.run([sys.executable, "-c", _SYNTH], capture_output=True, text=True,
                                      check=True).stdout) for _ in range(2)]
    assert runs[0] == runs[1]
    plain, jittered = runs[0]["False"], runs[0]["True"]
    assert plain[0] == "cmn+m1" and jittered[0] == "cmn+jitter77"
    assert plain[1] != jittered[1]
    # Same text, seed, rate and pitch: the long-term spectra differ by the formants alone.
    a, b = np.log(np.asarray(plain[2]) + 1.0), np.log(np.asarray(jittered[2]) + 1.0)
    assert np.abs(a - b).mean() > 0.3
    assert utterance_voice(ESpeak.get(), "cmn+m1", {"seed": 5}) == "cmn+m1"
