"""Parity with PaddleSpeech 1.5.0's U2Model on golden outputs it produced (tools/make_paddlespeech_golden.py).

The fixtures are PaddleSpeech-format folders (conf/model.yaml, exp/*/checkpoints/avg_1.pdparams,
data/lang_char/vocab.txt, data/mean_std.json) with fixed random weights, run by PaddleSpeech on the
real AISHELL utterance BAC009S0724W0121. Each test imports the folder with `import-paddlespeech`
(so the importer is under test too) and compares our model: encoder output, CTC log-probs, decoder
scores, the training loss, streaming chunk by chunk with its caches, and the hypotheses of the
four decoding methods - from the dynamic graph and from the exported programs. The U2++ model
(chunk_conformer_u2pp, bitransformer decoder) adds the right-to-left decoder's scores, both
directions' attention losses, and attention rescoring with and without its reverse_weight.
"""

from __future__ import annotations

import dataclasses
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
from paddle_asr.models.decoder import reverse_tokens
from paddle_asr.models.registry import build_model, load_weights

# The U2 methods PaddleSpeech has (ctc_beam_search_lm is DeepSpeech2's, with an LM).
METHODS = ("ctc_greedy_search", "ctc_prefix_beam_search", "attention", "attention_rescoring")

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "paddlespeech"
MODELS = ("conformer", "chunk_conformer", "chunk_conformer_u2pp")
CHUNK_MODELS = ("chunk_conformer", "chunk_conformer_u2pp")
U2PP = "chunk_conformer_u2pp"
ATOL = 1e-4


@cache
def golden(name: str) -> tuple[dict, dict[str, np.ndarray]]:
    meta = json.loads((FIXTURES / name / "golden.json").read_text(encoding="utf-8"))
    arrays = dict(np.load(FIXTURES / name / "golden.npz"))
    arrays["feats"] = np.load(FIXTURES / "input.npz")["feats"]
    return meta, arrays


def import_golden(name: str, exp: Path):
    """(config, model, exp): the fixture `name` through import-paddlespeech into `exp`, loaded."""
    import_paddlespeech(FIXTURES / name, exp, log=lambda *_: None)
    config = load_config(exp / "train.yaml")
    model = build_model(config)
    load_weights(model, exp / "checkpoints" / "avg_1.pdparams")
    model.eval()
    return config, model, exp


def export_golden(config, model, exp: Path, out: Path) -> Path:
    """The FP32 bundle of an imported fixture model (stage 4's export) in `out`."""
    from paddle_asr.export.bundle import write_bundle_files
    from paddle_asr.export.export import export_model

    diffs = export_model(model, config.input_dim, out)
    write_bundle_files(out, config, exp / "vocab.txt", model, checkpoint="golden", functions=sorted(diffs))
    return out


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """{name: (config, model, exp)} loaded from the experiment directories import-paddlespeech wrote."""
    return {name: import_golden(name, tmp_path_factory.mktemp("exp") / name) for name in MODELS}


def _feats(name):
    return golden(name)[1]["feats"][None].astype(np.float32)


@pytest.mark.parametrize("name", MODELS)
def test_imported_config_matches_the_paddlespeech_one(imported, name):
    config, _, exp = imported[name]
    ps = golden(name)[0]["model"]["config"]
    assert config.model.encoder.output_size == ps["encoder_conf"]["output_size"]
    assert config.model.encoder.causal == ps["encoder_conf"]["causal"]
    assert config.model.decoder.num_blocks == ps["decoder_conf"]["num_blocks"]
    assert config.model.decoder.type == ps["decoder"]
    assert config.model.decoder.r_num_blocks == ps["decoder_conf"].get("r_num_blocks", 0)
    assert config.model.decoder.reverse_weight == ps["model_conf"].get("reverse_weight", 0.0)
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
    """Left-to-right log-probs of the rescored n-best; U2++ also the right-to-left decoder's, on
    the reversed hypotheses built as PaddleSpeech builds them."""
    _, model, _ = imported[name]
    _, g = golden(name)
    lens = g["decoder_hyps_lens"] + 1
    with paddle.no_grad():
        out = model.forward_attention_decoder(
            paddle.to_tensor(g["decoder_in"]), paddle.to_tensor(lens), paddle.to_tensor(g["encoder_out"]),
            paddle.to_tensor([g["encoder_out"].shape[1]], dtype="int64"))
    directions = {"decoder_log_probs": out}
    if name == U2PP:
        directions = {"decoder_log_probs": out[0], "decoder_r_log_probs": out[1]}
        r_in = reverse_tokens(paddle.to_tensor(g["decoder_in"][:, 1:]), paddle.to_tensor(lens - 1), model.eos)
        np.testing.assert_array_equal(r_in.numpy(), g["decoder_r_in"][:, 1:])
    for key, lp in directions.items():
        for i, n in enumerate(lens):
            np.testing.assert_allclose(lp.numpy()[i, :n], g[key][i, :n], atol=ATOL, rtol=0, err_msg=key)


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
    if name == U2PP:  # both directions' losses, which "att" mixes with reverse_weight
        assert model.reverse_weight == 0.3
        np.testing.assert_allclose(float(parts["att_l2r"]), batch1["loss_att_l2r"], rtol=1e-4)
        np.testing.assert_allclose(float(parts["att_r2l"]), batch1["loss_att_r2l"], rtol=1e-4)


@pytest.mark.parametrize("name", CHUNK_MODELS)
@pytest.mark.parametrize("mode", ["chunk16", "chunk4_left2"])
def test_streaming_encoder_and_caches_match(imported, name, mode):
    _, model, _ = imported[name]
    meta, g = golden(name)
    settings = meta["chunk_encoder"][mode]
    chunk, left = settings["decoding_chunk_size"], settings["num_decoding_left_chunks"]
    feats = _feats(name)
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


def check_paddlespeech_hypotheses(backend, name: str, mode: str) -> None:
    """The four methods on `backend` give PaddleSpeech's hypotheses. The decode config leaves
    reverse_weight unset, so U2++ rescoring weighs the right-to-left decoder by the model's own
    reverse_weight, as PaddleSpeech's decode.yaml does; with reverse_weight 0 it gives PaddleSpeech's
    left-to-right-only choice (which differs in some modes: the fixture's seed was chosen so)."""
    meta, _ = golden(name)
    settings = meta["modes"][mode]
    assert backend.reverse_weight == meta["decoding"]["reverse_weight"]
    conf = DecodeConfig(beam_size=meta["decoding"]["beam_size"], ctc_weight=meta["decoding"]["ctc_weight"],
                        decoding_chunk_size=settings["decoding_chunk_size"],
                        num_decoding_left_chunks=settings["num_decoding_left_chunks"])
    feats = _feats(name)
    lengths = np.array([feats.shape[1]], np.int64)
    got = Recognizer(backend, conf).recognize(feats, lengths)
    for method in METHODS:
        assert got[method][0] == settings["results"][method]["token_ids"], method
    if name == U2PP:
        conf = dataclasses.replace(conf, methods=["attention_rescoring"], reverse_weight=0.0)
        (hyp,) = Recognizer(backend, conf).recognize(feats, lengths)["attention_rescoring"]
        assert hyp == settings["results"]["attention_rescoring_reverse_weight_0"]["token_ids"]


@pytest.mark.parametrize("name,mode", list(_golden_cases()))
def test_four_decoding_methods_give_paddlespeech_hypotheses(imported, name, mode):
    check_paddlespeech_hypotheses(DygraphBackend(imported[name][1]), name, mode)


def test_the_u2pp_fixture_s_rescoring_depends_on_reverse_weight():
    """Otherwise the hypothesis tests could not tell whether the right-to-left scores are used."""
    modes = golden(U2PP)[0]["modes"].values()
    assert any(m["results"]["attention_rescoring"]["token_ids"]
               != m["results"]["attention_rescoring_reverse_weight_0"]["token_ids"] for m in modes)


@pytest.fixture(scope="module")
def exported(imported, tmp_path_factory):
    return {name: export_golden(*imported[name], tmp_path_factory.mktemp("export") / name) for name in MODELS}


@pytest.mark.parametrize("name,mode", list(_golden_cases()))
def test_exported_programs_give_paddlespeech_hypotheses(exported, name, mode):
    from paddle_asr.export.runtime import load_backend

    bundle = exported[name]
    check_paddlespeech_hypotheses(load_backend(bundle, json.loads((bundle / "meta.json").read_text())), name, mode)
