"""Parity with PaddleSpeech 1.5.0's U2Model on golden outputs it produced (tools/make_paddlespeech_golden.py).

The fixtures are PaddleSpeech-format folders (conf/model.yaml, exp/*/checkpoints/avg_1.pdparams,
data/lang_char/vocab.txt, data/mean_std.json) with fixed random weights, run by PaddleSpeech on the
real AISHELL utterance BAC009S0724W0121. Each test imports the folder with `import-paddlespeech`
(so the importer is under test too) and compares our model: encoder output, CTC log-probs, decoder
scores, the training loss, streaming chunk by chunk with its caches, and the hypotheses of the
four decoding methods - from the dynamic graph and from the exported programs.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import numpy as np
import paddle
import pytest

from paddle_asr.config import DecodeConfig, load_config
from paddle_asr.decode.dygraph_backend import DygraphBackend
from paddle_asr.decode.recognizer import Recognizer, encode_streaming
from paddle_asr.import_paddlespeech import import_paddlespeech
from paddle_asr.models.registry import build_model, load_weights

# The U2 methods PaddleSpeech has (ctc_beam_search_lm is DeepSpeech2's, with an LM).
METHODS = ("ctc_greedy_search", "ctc_prefix_beam_search", "attention", "attention_rescoring")

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "paddlespeech"
MODELS = ("conformer", "chunk_conformer")
ATOL = 1e-4


@cache
def golden(name: str) -> tuple[dict, dict[str, np.ndarray]]:
    meta = json.loads((FIXTURES / name / "golden.json").read_text(encoding="utf-8"))
    arrays = dict(np.load(FIXTURES / name / "golden.npz"))
    arrays["feats"] = np.load(FIXTURES / "input.npz")["feats"]
    return meta, arrays


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """{name: (config, model)} loaded from the experiment directories import-paddlespeech wrote."""
    models = {}
    for name in MODELS:
        exp = tmp_path_factory.mktemp("exp") / name
        import_paddlespeech(FIXTURES / name, exp, log=lambda *_: None)
        config = load_config(exp / "train.yaml")
        model = build_model(config)
        load_weights(model, exp / "checkpoints" / "avg_1.pdparams")
        model.eval()
        models[name] = (config, model, exp)
    return models


def _feats(name):
    return golden(name)[1]["feats"][None].astype(np.float32)


@pytest.mark.parametrize("name", MODELS)
def test_imported_config_matches_the_paddlespeech_one(imported, name):
    config, _, exp = imported[name]
    ps = golden(name)[0]["model"]["config"]
    assert config.model.encoder.output_size == ps["encoder_conf"]["output_size"]
    assert config.model.encoder.causal == ps["encoder_conf"]["causal"]
    assert config.model.decoder.num_blocks == ps["decoder_conf"]["num_blocks"]
    assert config.vocab_size == golden(name)[0]["vocab_size"]
    assert json.loads((exp / "imported.json").read_text())["cmvn"].endswith("mean_std.json")


@pytest.mark.parametrize("name", MODELS)
def test_encoder_and_ctc_match(imported, name):
    _, model, _ = imported[name]
    _, g = golden(name)
    feats = _feats(name)
    with paddle.no_grad():
        feat_lengths = paddle.to_tensor([feats.shape[1]], dtype="int64")
        enc, lengths, ctc_lp = model.forward_encoder(paddle.to_tensor(feats), feat_lengths)
    assert int(lengths[0]) == g["encoder_out"].shape[1]
    np.testing.assert_allclose(enc.numpy(), g["encoder_out"], atol=ATOL, rtol=0)
    np.testing.assert_allclose(ctc_lp.numpy(), g["ctc_log_probs"], atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", MODELS)
def test_decoder_scores_match(imported, name):
    _, model, _ = imported[name]
    _, g = golden(name)
    lens = g["decoder_hyps_lens"] + 1
    with paddle.no_grad():
        lp = model.forward_attention_decoder(
            paddle.to_tensor(g["decoder_in"]), paddle.to_tensor(lens), paddle.to_tensor(g["encoder_out"]),
            paddle.to_tensor([g["encoder_out"].shape[1]], dtype="int64")).numpy()
    for i, n in enumerate(lens):
        np.testing.assert_allclose(lp[i, :n], g["decoder_log_probs"][i, :n], atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", MODELS)
def test_training_loss_matches(imported, name):
    _, model, _ = imported[name]
    meta, g = golden(name)
    batch1 = meta["loss"]["batch1"]
    feats = _feats(name)
    text = paddle.to_tensor(g["loss_text"][:1])
    chunk = batch1["dynamic_chunk_mask_drawn"][0]["chunk_size"] if batch1.get("dynamic_chunk_mask_drawn") else -1
    if chunk == batch1["encoder_out_lens"][0]:
        chunk = -1  # the draw was "full context"
    with paddle.no_grad():
        loss, parts = model(paddle.to_tensor(feats), paddle.to_tensor([feats.shape[1]], dtype="int64"), text,
                            paddle.to_tensor(g["loss_text_lengths"][:1]), decoding_chunk_size=chunk)
    np.testing.assert_allclose(float(parts["ctc"]), batch1["loss_ctc"], rtol=1e-4)
    np.testing.assert_allclose(float(parts["att"]), batch1["loss_att"], rtol=1e-4)
    np.testing.assert_allclose(float(loss), batch1["loss"], rtol=1e-4)


@pytest.mark.parametrize("mode", ["chunk16", "chunk4_left2"])
def test_streaming_encoder_and_caches_match(imported, mode):
    _, model, _ = imported["chunk_conformer"]
    meta, g = golden("chunk_conformer")
    settings = meta["chunk_encoder"][mode]
    chunk, left = settings["decoding_chunk_size"], settings["num_decoding_left_chunks"]
    feats = _feats("chunk_conformer")
    backend = DygraphBackend(model)
    streamed = encode_streaming(backend, feats[0], chunk, left)
    np.testing.assert_allclose(streamed, g[f"encoder_out_{mode}"], atol=ATOL, rtol=0)
    with paddle.no_grad():
        masked, _ = model.encoder(paddle.to_tensor(feats), paddle.to_tensor([feats.shape[1]], dtype="int64"),
                                  decoding_chunk_size=chunk, num_decoding_left_chunks=left)
    np.testing.assert_allclose(masked.numpy(), g[f"encoder_out_{mode}_masked"], atol=ATOL, rtol=0)
    # The caches after the first chunks, layout [layers, heads, t, 2*d_k] and [layers, 1, d, kernel-1]
    # (one stream's state holds the conv cache without the batch axis).
    state = backend.new_stream_state()
    for k, info in enumerate(settings["first_chunks"], 1):
        start, end = info["input_frames"]
        required = chunk * left if left >= 0 else -1
        _, (state,) = backend.encode_chunks(feats[:, start:end], [state], required)
        assert state.offset == info["offset_in"] + info["output_frames"]
        np.testing.assert_allclose(state.att_cache, g[f"{mode}_att_cache_{k}"], atol=ATOL, rtol=0)
        np.testing.assert_allclose(state.cnn_cache[:, None], g[f"{mode}_cnn_cache_{k}"], atol=ATOL, rtol=0)


def _golden_cases():
    for name in MODELS:
        for mode in golden(name)[0]["modes"]:
            yield name, mode


@pytest.mark.parametrize("name,mode", list(_golden_cases()))
def test_four_decoding_methods_give_paddlespeech_hypotheses(imported, name, mode):
    _, model, _ = imported[name]
    meta, _ = golden(name)
    settings = meta["modes"][mode]
    conf = DecodeConfig(beam_size=meta["decoding"]["beam_size"], ctc_weight=meta["decoding"]["ctc_weight"],
                        decoding_chunk_size=settings["decoding_chunk_size"],
                        num_decoding_left_chunks=settings["num_decoding_left_chunks"])
    feats = _feats(name)
    got = Recognizer(DygraphBackend(model), conf).recognize(feats, np.array([feats.shape[1]], np.int64))
    for method in METHODS:
        assert got[method][0] == settings["results"][method]["token_ids"], method


@pytest.fixture(scope="module")
def exported(imported, tmp_path_factory):
    from paddle_asr.export.bundle import write_bundle_files
    from paddle_asr.export.export import export_model

    bundles = {}
    for name, (config, model, exp) in imported.items():
        out = tmp_path_factory.mktemp("export") / name
        diffs = export_model(model, config.input_dim, out)
        write_bundle_files(out, config, exp / "vocab.txt", model, checkpoint="golden", functions=sorted(diffs))
        bundles[name] = out
    return bundles


@pytest.mark.parametrize("name,mode", list(_golden_cases()))
def test_exported_programs_give_paddlespeech_hypotheses(exported, name, mode):
    from paddle_asr.export.runtime import load_backend

    meta, _ = golden(name)
    settings = meta["modes"][mode]
    conf = DecodeConfig(beam_size=meta["decoding"]["beam_size"], ctc_weight=meta["decoding"]["ctc_weight"],
                        decoding_chunk_size=settings["decoding_chunk_size"],
                        num_decoding_left_chunks=settings["num_decoding_left_chunks"])
    bundle = exported[name]
    backend = load_backend(bundle, json.loads((bundle / "meta.json").read_text()))
    feats = _feats(name)
    got = Recognizer(backend, conf).recognize(feats, np.array([feats.shape[1]], np.int64))
    for method in METHODS:
        assert got[method][0] == settings["results"][method]["token_ids"], method
