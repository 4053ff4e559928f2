"""sherpa-onnx recognizers on our ONNX export (`export.onnx`), with our fbank settings.

`sherpa_onnx.OfflineRecognizer.from_wenet_ctc` and `OnlineRecognizer.from_wenet_ctc` read the
export as they are. They compute the fbank themselves, with kaldi-native-fbank as we do, but with
sherpa-onnx's defaults, two of which differ from how our models are trained (features.py):

- mel banks up to 7600 Hz (`high_freq=-400`); ours reach the Nyquist frequency (`high_freq=0`);
- no snip_edges: frames centred on the signal's edges, one or two more per utterance; ours snip.

`sherpa_recognizer` builds the same recognizers with our settings, which give the features ours
give (bit for bit without dither; the offline WeNet recognizer always dithers by 1 int16 step).
"""

from __future__ import annotations

from pathlib import Path

from paddle_asr.config import FeatureConfig
from paddle_asr.export.bundle import read_bundle
from paddle_asr.export.onnx import OFFLINE_MODEL, STREAMING_MODEL, TOKENS

# Our fbank in sherpa_onnx.FeatureExtractorConfig terms (features._fbank_options).
SHERPA_FEATURES = {"low_freq": 20.0, "high_freq": 0.0, "snip_edges": True}


def set_our_features(config, features: FeatureConfig) -> None:
    """Our fbank settings on a sherpa_onnx recognizer config (its `feat_config`, changed in place)."""
    feat = config.feat_config
    feat.sampling_rate, feat.feature_dim = features.sample_rate, features.num_mel_bins
    for key, value in SHERPA_FEATURES.items():
        setattr(feat, key, value)


def sherpa_recognizer(onnx_dir: Path, *, streaming: bool = False, chunk_size: int = 16, num_left_chunks: int = 4,
                      num_threads: int = 1, our_features: bool = True):
    """A sherpa_onnx OfflineRecognizer (`model.onnx`) or OnlineRecognizer (`model-streaming.onnx`)
    on the export in `onnx_dir`, built by `from_wenet_ctc`; with `our_features`, rebuilt with the
    fbank settings the model was trained with."""
    import sherpa_onnx

    onnx_dir = Path(onnx_dir)
    _, features, _ = read_bundle(onnx_dir)
    common = {"tokens": str(onnx_dir / TOKENS), "num_threads": num_threads,
              "sample_rate": features.sample_rate, "feature_dim": features.num_mel_bins}
    if streaming:
        rec = sherpa_onnx.OnlineRecognizer.from_wenet_ctc(model=str(onnx_dir / STREAMING_MODEL), chunk_size=chunk_size,
                                                          num_left_chunks=num_left_chunks, **common)
    else:
        rec = sherpa_onnx.OfflineRecognizer.from_wenet_ctc(model=str(onnx_dir / OFFLINE_MODEL), **common)
    if our_features:
        set_our_features(rec.config, features)
        rec.recognizer = type(rec.recognizer)(rec.config)
    return rec
