"""The U2 model: PaddleSpeech names and shapes, lengths, batch independence, the hybrid loss,
and streaming (chunk by chunk with caches == the chunk-masked full forward)."""

import copy
import dataclasses
from pathlib import Path

import numpy as np
import paddle
import pytest

from paddle_asr.config import load_config
from paddle_asr.data.audio import read_audio
from paddle_asr.decode.dygraph_backend import DygraphBackend
from paddle_asr.decode.recognizer import chunk_windows, encode_streaming, encode_streaming_batch
from paddle_asr.errors import AsrError
from paddle_asr.features import compute_fbank
from paddle_asr.models.registry import build_model
from tests.conftest import real_fixture

REPO = Path(__file__).resolve().parents[1]


def _model(config="recipes/demo/conf/conformer.yaml", encoder_type=None, vocab=40, **encoder):
    config = dataclasses.replace(load_config(REPO / config), vocab_size=vocab, input_dim=80)
    config.model.encoder = dataclasses.replace(config.model.encoder, **encoder)
    if encoder_type:
        config.model.encoder_type = encoder_type
    paddle.seed(0)
    model = build_model(config)
    randomise_biases(model)
    model.eval()
    return model


def randomise_biases(model) -> None:
    """Trained models have non-zero biases; fresh ones have zeros, which would hide padding leaks
    and a wrong bias gradient."""
    rng = np.random.default_rng(0)
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            p.set_value(rng.normal(0, 0.5, p.shape).astype("float32"))


def test_parameter_names_and_shapes_follow_paddlespeech():
    model = _model("recipes/aishell/conf/conformer.yaml", vocab=4233, num_blocks=2)
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert shapes["encoder.embed.conv.0.weight"] == [256, 1, 3, 3]
    assert shapes["encoder.embed.conv.2.weight"] == [256, 256, 3, 3]
    assert shapes["encoder.embed.out.0.weight"] == [4864, 256]  # 256 * 19 for 80-dim input
    assert shapes["encoder.encoders.1.self_attn.pos_bias_u"] == [4, 64]
    assert shapes["encoder.encoders.1.self_attn.linear_pos.weight"] == [256, 256]
    assert "encoder.encoders.1.self_attn.linear_pos.bias" not in shapes
    assert shapes["encoder.encoders.1.feed_forward_macaron.w_1.weight"] == [256, 2048]
    assert shapes["encoder.encoders.1.conv_module.pointwise_conv1.weight"] == [512, 256, 1]
    assert shapes["encoder.encoders.1.conv_module.depthwise_conv.weight"] == [256, 1, 15]
    assert shapes["encoder.encoders.1.conv_module.norm._variance"] == [256]
    assert shapes["encoder.global_cmvn.mean"] == [80] and shapes["encoder.global_cmvn.istd"] == [80]
    assert shapes["ctc.ctc_lo.weight"] == [256, 4233]
    assert shapes["decoder.embed.0.weight"] == [4233, 256]
    assert shapes["decoder.output_layer.weight"] == [256, 4233]
    assert shapes["decoder.decoders.5.src_attn.linear_k.weight"] == [256, 256]
    assert shapes["decoder.decoders.5.concat_linear2.weight"] == [512, 256]
    assert shapes["decoder.decoders.5.feed_forward.w_1.weight"] == [256, 2048]
    # PaddleSpeech's U2Model: 39 tensors per BatchNorm encoder layer, 30 per decoder layer (docs/paddlespeech.md).
    assert len([k for k in shapes if k.startswith("encoder.encoders.0.")]) == 39
    assert len([k for k in shapes if k.startswith("decoder.decoders.0.")]) == 30
    assert not any("pos_enc" in k or k.endswith(".pe") for k in shapes)  # positional tables are not stored
    decoder_params = sum(int(np.prod(v)) for k, v in shapes.items() if k.startswith("decoder."))
    assert decoder_params == 13_220_489  # PaddleSpeech's AISHELL decoder, V=4233


def test_chunk_model_has_layer_norm_conv_and_37_tensors_per_layer():
    model = _model("recipes/aishell/conf/chunk_conformer.yaml", num_blocks=1)
    keys = [k for k in model.state_dict() if k.startswith("encoder.encoders.0.")]
    assert len(keys) == 37
    assert "encoder.encoders.0.conv_module.norm._mean" not in keys


def test_transformer_encoder_names():
    model = _model("recipes/aishell/conf/transformer.yaml", num_blocks=1)
    keys = {k for k in model.state_dict() if k.startswith("encoder.encoders.0.")}
    assert {"encoder.encoders.0.norm1.weight", "encoder.encoders.0.self_attn.linear_q.weight",
            "encoder.encoders.0.feed_forward.w_2.bias", "encoder.encoders.0.concat_linear.weight"} <= keys
    assert not any("pos_bias" in k for k in keys)


@pytest.mark.parametrize("input_layer,expected", [
    ("conv2d", lambda n: ((n - 1) // 2 - 1) // 2),
    ("conv2d6", lambda n: ((n - 1) // 2 - 2) // 3),
    ("conv2d8", lambda n: (((n - 1) // 2 - 1) // 2 - 1) // 2),
])
def test_output_lengths_follow_the_subsampling_formula(input_layer, expected):
    model = _model(input_layer=input_layer)
    lengths = paddle.to_tensor([400, 173, 31], dtype="int64")
    _, out_lengths, _ = model.forward_encoder(paddle.randn([3, 400, 80]), lengths)
    assert out_lengths.numpy().tolist() == [expected(n) for n in (400, 173, 31)]


@pytest.mark.parametrize("config", ["recipes/aishell/conf/conformer.yaml", "recipes/demo/conf/conformer.yaml"])
def test_an_utterance_encodes_the_same_alone_or_padded_in_a_batch(config):
    model = _model(config, num_blocks=2, output_size=64, linear_units=128, subsampling_channels=16)
    rng = np.random.default_rng(1)
    long = rng.normal(10, 3, (1, 300, 80)).astype("float32")
    short = rng.normal(10, 3, (1, 173, 80)).astype("float32")
    batch = np.concatenate([long, np.pad(short, ((0, 0), (0, 127), (0, 0)))])
    with paddle.no_grad():
        alone, n, _ = model.forward_encoder(paddle.to_tensor(short), paddle.to_tensor([173], dtype="int64"))
        padded, _, _ = model.forward_encoder(paddle.to_tensor(batch), paddle.to_tensor([300, 173], dtype="int64"))
        n = int(n[0])
        np.testing.assert_allclose(padded.numpy()[1, :n], alone.numpy()[0, :n], atol=1e-4)
        hyps = paddle.to_tensor([[39, 5, 6, 7]], dtype="int64")
        dec_alone = model.forward_attention_decoder(hyps, paddle.to_tensor([4], dtype="int64"), alone,
                                                    paddle.to_tensor([n], dtype="int64"))
        dec_padded = model.forward_attention_decoder(hyps, paddle.to_tensor([4], dtype="int64"), padded[1:],
                                                     paddle.to_tensor([n], dtype="int64"))
    np.testing.assert_allclose(dec_padded.numpy(), dec_alone.numpy(), atol=1e-4)


def _stream(model, x, chunk, left):
    """`encode_streaming` through the dygraph backend, and the stream's attention cache at the end."""
    backend = DygraphBackend(model)
    windows = chunk_windows(x.shape[1], backend.subsampling_rate, backend.right_context, chunk)
    state, outs = backend.new_stream_state(), []
    for start, end in windows:
        y, (state,) = backend.encode_chunks(x[:, start:end], [state], chunk * left if left >= 0 else -1)
        outs.append(y)
    streamed = np.concatenate(outs, axis=1)
    np.testing.assert_array_equal(streamed, encode_streaming(backend, x[0], chunk, left))
    return streamed, state.att_cache


@pytest.mark.parametrize("input_layer,chunk,left,pos", [("conv2d", 16, -1, "rel_pos"), ("conv2d", 4, 2, "rel_pos"),
                                                       ("conv2d8", 3, -1, "rel_pos"), ("conv2d6", 5, 1, "rel_pos"),
                                                       ("conv2d", 4, 2, "abs_pos")])
def test_chunk_by_chunk_decoding_equals_the_chunk_masked_full_forward(input_layer, chunk, left, pos):
    model = _model("recipes/aishell/conf/chunk_conformer.yaml", num_blocks=2, output_size=64, linear_units=128,
                   input_layer=input_layer, subsampling_channels=16, pos_enc_layer_type=pos,
                   selfattention_layer_type="rel_selfattn" if pos == "rel_pos" else "selfattn")
    assert model.encoder.supports_streaming
    x = np.random.default_rng(2).normal(10, 3, (1, 411, 80)).astype("float32")
    streamed, att = _stream(model, x, chunk, left)
    with paddle.no_grad():
        masked, n = model.encoder(paddle.to_tensor(x), paddle.to_tensor([411], dtype="int64"),
                                  decoding_chunk_size=chunk, num_decoding_left_chunks=left)
        full, _ = model.encoder(paddle.to_tensor(x), paddle.to_tensor([411], dtype="int64"))
    assert streamed.shape[1] == int(n[0])
    np.testing.assert_allclose(streamed, masked.numpy(), atol=2e-5)
    assert np.abs(streamed - full.numpy()).max() > 1e-2  # the chunk mask really limits the context
    if left >= 0:
        assert att.shape[2] == chunk * left  # the attention cache keeps only the requested history


def assert_states_equal(got, expected, atol: float) -> None:
    """Two stream states (dataclasses of arrays and ints) hold the same values."""
    for field in dataclasses.fields(expected):
        a, b = getattr(got, field.name), getattr(expected, field.name)
        if isinstance(b, np.ndarray):
            assert a.shape == b.shape, field.name
            np.testing.assert_allclose(a, b, atol=atol, rtol=0, err_msg=field.name)
        else:
            assert a == b, field.name


def check_streams_batched_equal_alone(backend, utterances: list[np.ndarray], chunk: int, required: int,
                                      atol: float) -> list:
    """Three streams at different points of their utterances (no history yet, 1 chunk done, 3 chunks
    done: different offsets and cache lengths, one cache empty) take their next chunk in ONE
    `encode_chunks` call; each stream's output and new state equal its own call alone, and the
    states passed in are left unchanged. Returns the new states."""
    windows = chunk_windows(min(len(u) for u in utterances), backend.subsampling_rate, backend.right_context, chunk)
    states, nexts = [], []
    for feats, done in zip(utterances, (0, 1, 3)):
        state = backend.new_stream_state()
        for start, end in windows[:done]:
            _, (state,) = backend.encode_chunks(feats[None, start:end], [state], required)
        states.append(state)
        nexts.append(feats[windows[done][0]:windows[done][1]])
    before = [copy.deepcopy(s) for s in states]
    batched, new_states = backend.encode_chunks(np.stack(nexts), states, required)
    assert batched.shape[0] == 3 and len(new_states) == 3
    for b in range(3):
        assert_states_equal(states[b], before[b], atol=0)
        alone, (state_alone,) = backend.encode_chunks(nexts[b][None], [states[b]], required)
        np.testing.assert_allclose(batched[b], alone[0], atol=atol, rtol=0)
        assert_states_equal(new_states[b], state_alone, atol)
    return new_states


def check_cache_stays_bounded(backend, feats: np.ndarray, chunk: int) -> None:
    """With required_cache_size = 2 * chunk, a stream's attention cache grows to 2 chunks over the
    first chunks and stays there over 10 chunks."""
    windows = chunk_windows(len(feats), backend.subsampling_rate, backend.right_context, chunk)
    assert len(windows) >= 10
    state = backend.new_stream_state()
    for k, (start, end) in enumerate(windows[:10], 1):
        _, (state,) = backend.encode_chunks(feats[None, start:end], [state], 2 * chunk)
        assert state.offset == k * chunk
        assert state.att_cache.shape[2] == min(k, 2) * chunk


@pytest.mark.parametrize("pos", ["rel_pos", "abs_pos"])
def test_streams_in_one_batch_equal_each_stream_alone(pos):
    model = _model("recipes/aishell/conf/chunk_conformer.yaml", num_blocks=2, output_size=64, linear_units=128,
                   subsampling_channels=16, pos_enc_layer_type=pos,
                   selfattention_layer_type="rel_selfattn" if pos == "rel_pos" else "selfattn")
    rng = np.random.default_rng(5)
    utterances = [rng.normal(10, 3, (300, 80)).astype("float32") for _ in range(3)]
    backend = DygraphBackend(model)
    for required in (-1, 8):
        states = check_streams_batched_equal_alone(backend, utterances, 4, required, atol=1e-5)
        expected = [0 + 4, 4 + 4, 12 + 4] if required < 0 else [4, 8, 8]
        assert [s.att_cache.shape[2] for s in states] == expected
    check_cache_stays_bounded(backend, utterances[0], 4)


@pytest.mark.parametrize("chunk,left", [(4, -1), (4, 2), (3, 1)])
def test_streaming_a_batch_of_utterances_equals_each_utterance_streamed_alone(chunk, left):
    """`encode_streaming_batch` (stages 3/5/6 in chunk mode): real recordings cut to lengths whose
    last windows differ, and whose window counts differ, give each utterance's own stream."""
    model = _model("recipes/aishell/conf/chunk_conformer.yaml", num_blocks=2, output_size=64, linear_units=128,
                   subsampling_channels=16)
    config = load_config(Path("recipes/demo/conf/conformer.yaml")).features
    feats = [compute_fbank(read_audio(real_fixture(name))[0], config)
             for name in ("aishell-BAC009S0724W0121.wav", "librispeech-1995-1837-0001.wav")]
    utterances = [feats[0], feats[1][:203], feats[0][:211], feats[1][:7], feats[1]]
    backend = DygraphBackend(model)
    batched = encode_streaming_batch(backend, utterances, chunk, left)
    for u, got in zip(utterances, batched):
        alone, _ = _stream(model, u[None], chunk, left)  # window by window, one stream
        assert got.shape == alone.shape
        np.testing.assert_allclose(got, alone, atol=1e-5, rtol=0)
    with pytest.raises(AsrError, match="6 frames are fewer than the 7"):
        encode_streaming_batch(backend, [feats[0], feats[0][:6]], chunk, left)


def test_a_stream_past_the_positional_table_is_refused():
    model = _model("recipes/aishell/conf/chunk_conformer.yaml", num_blocks=1, output_size=64, linear_units=128,
                   subsampling_channels=16)
    backend = DygraphBackend(model)
    state = dataclasses.replace(backend.new_stream_state(), offset=model.encoder.max_output_frames - 2)
    xs = np.zeros((1, 3 * 4 + 7, 80), np.float32)  # 4 encoder frames
    with pytest.raises(AsrError, match="past the 5000 positions"):
        backend.encode_chunks(xs, [state], -1)


def test_streaming_needs_a_chunk_trained_causal_model():
    assert not _model("recipes/aishell/conf/conformer.yaml", num_blocks=1).encoder.supports_streaming
    assert _model("recipes/aishell/conf/chunk_conformer.yaml", num_blocks=1).encoder.supports_streaming


def test_hybrid_loss_weights_and_label_smoothing():
    model = _model(output_size=64, linear_units=128)
    rng = np.random.default_rng(3)
    feats = paddle.to_tensor(rng.normal(10, 3, (2, 200, 80)).astype("float32"))
    lengths = paddle.to_tensor([200, 150], dtype="int64")
    labels = paddle.to_tensor([[3, 4, 5], [6, 7, -1]], dtype="int64")
    label_lengths = paddle.to_tensor([3, 2], dtype="int64")
    with paddle.no_grad():
        loss, parts = model(feats, lengths, labels, label_lengths)
        # The attention loss by hand: KL(smoothed target || decoder softmax) summed, / batch size.
        hs, hs_len = model.encoder(feats, lengths)
        ys_in, ys_out = model.add_sos_eos(labels, label_lengths)
        logits = model.decoder(hs, hs_len, ys_in, label_lengths + 1, model.token_clock(hs))
        logp = paddle.nn.functional.log_softmax(logits, -1).numpy()
    assert ys_in.numpy().tolist() == [[39, 3, 4, 5], [39, 6, 7, 39]]
    assert ys_out.numpy().tolist() == [[3, 4, 5, 39], [6, 7, 39, -1]]
    v, s = 40, model.lsm_weight
    total = 0.0
    for b, row in enumerate(ys_out.numpy()):
        for u, t in enumerate(row):
            if t == -1:
                continue
            target = np.full(v, s / (v - 1))
            target[t] = 1 - s
            total += float((target * (np.log(target) - logp[b, u])).sum())
    np.testing.assert_allclose(float(parts["att"]), total / 2, rtol=1e-5)
    w = model.ctc_weight
    np.testing.assert_allclose(float(loss), w * float(parts["ctc"]) + (1 - w) * float(parts["att"]), rtol=1e-6)


def test_first_convolution_as_a_matrix_product_matches_conv2d():
    """Training runs the first subsampling convolution as unfold + one GEMM with the bias folded in
    (layers.Conv2dSubsampling._first_conv_as_gemm); it must equal Conv2D + ReLU, gradients included."""
    from paddle_asr.models.layers import Conv2dSubsampling

    paddle.seed(3)
    sub = Conv2dSubsampling(80, 64, 4, 32)
    x = paddle.randn([3, 57, 80])
    results = {}
    for training in (True, False):
        sub.train() if training else sub.eval()
        sub.clear_gradients()
        out = sub(x)
        (out * paddle.arange(out.size, dtype=out.dtype).reshape(out.shape) / out.size).sum().backward()
        results[training] = (out.numpy(), sub.conv[0].weight.grad.numpy(), sub.conv[0].bias.grad.numpy())
    for a, b in zip(results[True], results[False]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)



def _decoder(**options):
    from paddle_asr.config import DecoderConfig
    from paddle_asr.models.decoder import TransformerDecoder

    paddle.seed(0)
    decoder = TransformerDecoder(40, 64, DecoderConfig(attention_heads=4, linear_units=128, num_blocks=2, **options))
    randomise_biases(decoder)
    decoder.eval()
    return decoder


def test_memory_positions_break_the_source_attentions_indifference_to_frame_order():
    """model.decoder.memory_positions: without it the decoder cannot tell where in the audio a frame
    lies (permuting the encoder frames leaves its output unchanged); with it, it can. The parameters
    are the same either way, so checkpoints load both ways."""
    plain, positioned = _decoder(), _decoder(memory_positions=True)
    assert plain.state_dict().keys() == positioned.state_dict().keys()
    positioned.set_state_dict(plain.state_dict())
    rng = np.random.default_rng(1)
    memory = rng.normal(0, 1, (1, 30, 64)).astype("float32")
    shuffled = memory[:, rng.permutation(30)]
    ys = paddle.to_tensor([[39, 3, 4, 5, 6]], dtype="int64")
    lengths, ys_lengths = paddle.to_tensor([30], dtype="int64"), paddle.to_tensor([5], dtype="int64")

    def logits(decoder, mem):
        with paddle.no_grad():
            return decoder(paddle.to_tensor(mem), lengths, ys, ys_lengths).numpy()

    np.testing.assert_allclose(logits(plain, memory), logits(plain, shuffled), atol=1e-5)
    assert np.abs(logits(positioned, memory) - logits(positioned, shuffled)).max() > 1e-2


def test_sinusoid_of_integer_positions_is_the_table():
    from paddle_asr.models.layers import sinusoid, sinusoid_table

    positions = paddle.to_tensor([[0.0, 1.0, 7.0, 33.0]])
    np.testing.assert_allclose(sinusoid(positions, 64).numpy()[0], sinusoid_table(34, 64)[0, [0, 1, 7, 33]],
                               atol=1e-5)


def test_the_token_clock_counts_the_units_ctc_has_emitted_by_each_frame():
    """model.decoder.memory_position_unit token: the decoder's memory positions are the running sum
    of 1 - P(blank), each frame counting half of its own, so a voice twice as fast reaches token u
    in half the frames; the frame clock is the frame index whatever the voice."""
    from tests.test_export_quant import build_small_u2

    _, model = build_small_u2(decoder_clock="token")
    rng = np.random.default_rng(0)
    encoder_out = paddle.to_tensor(rng.normal(0, 1, (2, 25, 144)).astype("float32"))
    clock = model.token_clock(encoder_out).numpy()
    emitted = 1.0 - np.exp(model.ctc.log_softmax(encoder_out).numpy()[:, :, 0])
    np.testing.assert_allclose(clock, np.cumsum(emitted, axis=1) - emitted / 2, atol=1e-5)
    assert (np.diff(clock, axis=1) >= 0).all() and clock[:, -1].min() > 1
    assert build_small_u2(decoder_clock="frame")[1].token_clock(encoder_out) is None
    with paddle.no_grad():
        hyps, lengths = paddle.to_tensor([[59, 3, 4], [59, 5, 6]], dtype="int64"), paddle.to_tensor([3, 3])
        ticking = model.forward_attention_decoder(hyps, lengths, encoder_out, paddle.to_tensor([25, 25]))
        model.decoder.memory_position_unit = "frame"
        counting = model.forward_attention_decoder(hyps, lengths, encoder_out, paddle.to_tensor([25, 25]))
    assert np.abs(ticking.numpy() - counting.numpy()).max() > 1e-2


def test_input_noise_replaces_tokens_after_sos_by_real_tokens_at_the_configured_rate():
    ys = paddle.full([64, 100], 7, dtype="int64")
    ys[:, 0] = 39
    assert (_decoder().noisy_inputs(ys).numpy() == ys.numpy()).all()
    paddle.seed(5)
    noisy = _decoder(input_noise=0.3).noisy_inputs(ys).numpy()
    assert (noisy[:, 0] == 39).all()
    changed = noisy[:, 1:] != 7
    assert 0.27 < changed.mean() < 0.31  # 0.3 less the 1-in-38 draws of token 7 itself
    assert noisy[:, 1:].min() >= 1 and noisy[:, 1:].max() <= 38


def test_training_chunks_are_drawn_from_the_configured_range():
    import random

    model = _model("recipes/aishell/conf/chunk_conformer.yaml", num_blocks=1, output_size=64, linear_units=64,
                   dynamic_chunk_min=8, dynamic_chunk_max=12)
    random.seed(0)
    drawn = [model.encoder._chunking(0, -1, 200) for _ in range(2000)]
    sizes = {d[0] for d in drawn if d is not None}
    assert sizes == set(range(8, 13))
    assert 0.4 < sum(d is None for d in drawn) / len(drawn) < 0.6  # half the batches: full context


@pytest.mark.parametrize("section, options, match", [
    ("encoder", "dynamic_chunk_min: 9\n    dynamic_chunk_max: 4", "dynamic_chunk_min: 9 is above dynamic_chunk_max 4"),
    ("decoder", "memory_position_unit: token", "memory_position_unit: token .* set memory_positions: true"),
    ("decoder", "memory_position_unit: tokens", "memory_position_unit"),
])
def test_model_options_that_cannot_work_are_refused(tmp_path, section, options, match):
    config = tmp_path / "c.yaml"
    config.write_text(f"base: {REPO}/conf/model/chunk_conformer.yaml\nmodel:\n  {section}:\n    {options}\n")
    with pytest.raises(AsrError, match=match):
        load_config(config)


def _u2pp(reverse_weight: float = 0.3):
    """A small U2++ model: 2 left-to-right and 1 right-to-left decoder blocks."""
    config = dataclasses.replace(load_config(REPO / "recipes/aishell/conf/chunk_conformer_u2pp.yaml"), vocab_size=40,
                                 input_dim=80)
    config.model.encoder = dataclasses.replace(config.model.encoder, output_size=64, linear_units=128, num_blocks=2)
    config.model.decoder = dataclasses.replace(config.model.decoder, linear_units=128, num_blocks=2, r_num_blocks=1,
                                               reverse_weight=reverse_weight)
    paddle.seed(0)
    model = build_model(config)
    randomise_biases(model)
    model.eval()
    return model


def _smoothed_kl(logits: paddle.Tensor, ys_out: np.ndarray, smoothing: float, batch: int) -> float:
    """The label-smoothed attention loss by hand: KL(smoothed target || softmax) summed, / batch size."""
    logp = paddle.nn.functional.log_softmax(logits, -1).numpy()
    v, total = logp.shape[-1], 0.0
    for b, row in enumerate(ys_out):
        for u, t in enumerate(row):
            if t != -1:
                target = np.full(v, smoothing / (v - 1))
                target[t] = 1 - smoothing
                total += float((target * (np.log(target) - logp[b, u])).sum())
    return total / batch


def test_u2pp_trains_the_right_to_left_decoder_on_the_reversed_transcript():
    """U2++'s loss: the right-to-left decoder reads `<sos> y_n ... y_1` and predicts `y_n ... y_1 <eos>`;
    att = 0.7 * left-to-right + 0.3 * right-to-left, and the gradient reaches the right decoder."""
    model = _u2pp()
    blocks = {k.split(".")[3] for k in model.state_dict() if k.startswith("decoder.right_decoder.decoders.")}
    assert blocks == {"0"}  # r_num_blocks 1, beside num_blocks 2
    rng = np.random.default_rng(3)
    feats = paddle.to_tensor(rng.normal(10, 3, (2, 200, 80)).astype("float32"))
    lengths = paddle.to_tensor([200, 150], dtype="int64")
    labels = paddle.to_tensor([[3, 4, 5], [6, 7, -1]], dtype="int64")
    label_lengths = paddle.to_tensor([3, 2], dtype="int64")
    loss, parts = model(feats, lengths, labels, label_lengths)
    with paddle.no_grad():
        hs, hs_len = model.encoder(feats, lengths)
        r_ys_in, r_ys_out = model.add_sos_eos(paddle.to_tensor([[5, 4, 3], [7, 6, -1]], dtype="int64"), label_lengths)
        r_logits = model.decoder.forward_right(hs, hs_len, r_ys_in, label_lengths + 1)
    assert r_ys_in.numpy().tolist() == [[39, 5, 4, 3], [39, 7, 6, 39]]
    np.testing.assert_allclose(float(parts["att_r2l"]), _smoothed_kl(r_logits, r_ys_out.numpy(), 0.1, 2), rtol=1e-5)
    np.testing.assert_allclose(float(parts["att"]), 0.7 * float(parts["att_l2r"]) + 0.3 * float(parts["att_r2l"]),
                               rtol=1e-6)
    np.testing.assert_allclose(float(loss), 0.3 * float(parts["ctc"]) + 0.7 * float(parts["att"]), rtol=1e-6)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if n.startswith("decoder.right_decoder.")}
    assert grads and all(g is not None and float(g.abs().sum()) > 0 for n, g in grads.items()
                         if "concat_linear" not in n)


def test_u2pp_decoder_scores_both_directions_of_each_hypothesis():
    """forward_attention_decoder: the left-to-right log-probs are the plain decoder's, and the
    right-to-left ones those of `<sos> reversed(tokens)` rows, whatever the padding."""
    model = _u2pp()
    enc = paddle.to_tensor(np.random.default_rng(4).normal(0, 1, (1, 30, 64)).astype("float32"))
    hyps = paddle.to_tensor([[39, 5, 8, 9], [39, 6, 39, 39], [39, 39, 39, 39]], dtype="int64")
    lengths = paddle.to_tensor([4, 2, 1], dtype="int64")
    enc_len = paddle.to_tensor([30], dtype="int64")
    with paddle.no_grad():
        left, right = model.forward_attention_decoder(hyps, lengths, enc, enc_len)
        alone = model.forward_left_decoder(hyps, lengths, enc, enc_len)
        r_in = paddle.to_tensor([[39, 9, 8, 5]], dtype="int64")
        r_alone = model.decoder.forward_right(enc, enc_len, r_in, lengths[:1])
    np.testing.assert_array_equal(left.numpy(), alone.numpy())
    np.testing.assert_allclose(right.numpy()[0], paddle.nn.functional.log_softmax(r_alone, -1).numpy()[0], atol=1e-5)
    assert right.shape == left.shape == [3, 4, 40]


def test_reverse_weight_needs_a_bitransformer():
    from paddle_asr.config import DecodeConfig
    from paddle_asr.decode.recognizer import Recognizer

    with pytest.raises(AsrError, match="reverse_weight 0.3 weighs a right-to-left decoder, which this model lacks"):
        Recognizer(DygraphBackend(_model(output_size=64, linear_units=128)), DecodeConfig(reverse_weight=0.3))
    assert Recognizer(DygraphBackend(_u2pp()), DecodeConfig()).reverse_weight == 0.3


@pytest.mark.parametrize("batch, hyps, units, frames", [(1, 1, 1, 7), (3, 4, 6, 29), (2, 10, 13, 51)])
def test_shared_memory_attention_equals_attention_over_memories_repeated_per_hypothesis(batch, hyps, units, frames):
    """Beam search's source attention (each utterance's memory projected once for its R
    hypotheses) gives what attention over the memory repeated R times gives, padding masked."""
    from paddle_asr.models.layers import MultiHeadedAttention

    paddle.seed(0)
    att = MultiHeadedAttention(4, 64, 0.0)
    att.eval()
    randomise_biases(att)
    rng = np.random.default_rng(1)
    query = rng.normal(0, 1, (batch * hyps, units, 64)).astype("float32")
    memory = rng.normal(0, 1, (batch, frames, 64)).astype("float32")
    lengths = rng.integers(1, frames + 1, batch)
    bias = np.where(np.arange(frames)[None] < lengths[:, None], 0.0, -1e10).astype("float32")[:, None, None, :]
    with paddle.no_grad():
        shared = att.forward_shared_memory(paddle.to_tensor(query), paddle.to_tensor(memory), paddle.to_tensor(bias))
        repeated, _ = att(paddle.to_tensor(query), paddle.to_tensor(np.repeat(memory, hyps, axis=0)),
                          paddle.to_tensor(np.repeat(memory, hyps, axis=0)),
                          paddle.to_tensor(np.repeat(bias, hyps, axis=0)))
    assert shared.shape == [batch * hyps, units, 64]
    np.testing.assert_allclose(shared.numpy(), repeated.numpy(), rtol=0, atol=1e-5)


def _step_by_step(model, hyps: np.ndarray, enc: np.ndarray, enc_len: np.ndarray) -> np.ndarray:
    """`forward_decoder_step` over each row's prefix, one token a call, keys and values carried in
    the cache -> the log-probs [N, U, V] of every position."""
    layers, heads, width = model.decoder_cache_shape()
    cache = np.zeros((layers, len(hyps), heads, 1, width), np.float32)
    out = []
    with paddle.no_grad():
        for i in range(hyps.shape[1]):
            logp, kv = model.forward_decoder_step(paddle.to_tensor(hyps[:, i:i + 1]), paddle.to_tensor(cache),
                                                  paddle.to_tensor(enc), paddle.to_tensor(enc_len))
            cache = np.concatenate([cache, kv.numpy()], axis=3)
            out.append(logp.numpy())
    return np.stack(out, axis=1)


@pytest.mark.parametrize("build", ["demo", "aishell", "u2pp"])
def test_incremental_decoding_equals_the_full_prefix_decoder_at_every_position(build):
    """Attention beam search's decoder step (one new token a row, earlier keys and values from the
    cache) gives the log-probs the whole-prefix decoder gives at that position, to 1e-5: the demo's
    1-block decoder with token memory positions, the AISHELL 6-block one, a U2++ left decoder."""
    model = {"demo": lambda: _model(), "u2pp": _u2pp,
             "aishell": lambda: _model("recipes/aishell/conf/conformer.yaml", output_size=64, linear_units=128,
                                       num_blocks=2)}[build]()
    rng = np.random.default_rng(3)
    d = model.encoder.output_size
    enc = rng.normal(0, 1, (2, 23, d)).astype("float32")
    enc_len = np.asarray([23, 15], np.int64)
    hyps = rng.integers(1, model.vocab_size - 1, (6, 9)).astype(np.int64)  # 3 hypotheses per utterance
    hyps[:, 0] = model.sos
    with paddle.no_grad():
        full = model.forward_left_decoder(paddle.to_tensor(hyps), paddle.to_tensor(np.full(6, 9, np.int64)),
                                          paddle.to_tensor(enc), paddle.to_tensor(enc_len)).numpy()
    np.testing.assert_allclose(_step_by_step(model, hyps, enc, enc_len), full, atol=1e-5, rtol=0)
