"""The Conformer-CTC model: PaddleSpeech names and shapes, lengths, and batch independence."""

import dataclasses
from pathlib import Path

import numpy as np
import paddle

from paddle_asr.config import load_config
from paddle_asr.models.registry import build_model

REPO = Path(__file__).resolve().parents[1]


def _model(**encoder):
    config = dataclasses.replace(load_config(REPO / "recipes/demo/conf/conformer_ctc.yaml"), vocab_size=40, input_dim=80)
    config.model.encoder = dataclasses.replace(config.model.encoder, **encoder)
    paddle.seed(0)
    model = build_model(config)
    # Trained models have non-zero biases and BatchNorm statistics; fresh ones have zeros,
    # which would hide padding leaks.
    rng = np.random.default_rng(0)
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            p.set_value(rng.normal(0, 0.5, p.shape).astype("float32"))
    model.eval()
    return model


def test_parameter_names_and_shapes_follow_paddlespeech():
    model = _model(output_size=256, linear_units=2048, num_blocks=2, input_layer="conv2d", subsampling_channels=None)
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
    assert shapes["ctc.ctc_lo.weight"] == [256, 40]
    assert shapes["encoder.global_cmvn.mean"] == [80] and shapes["encoder.global_cmvn.istd"] == [80]
    per_layer = [k for k in shapes if k.startswith("encoder.encoders.0.")]
    assert len(per_layer) == 39  # REFERENCE §8.2: 39 tensors per BatchNorm encoder layer
    assert not any("pos_enc" in k for k in shapes)  # positional tables are not stored


def test_output_lengths_follow_the_subsampling_formula():
    model = _model()
    lengths = paddle.to_tensor([400, 173, 15], dtype="int64")
    feats = paddle.randn([3, 400, 80])
    _, out_lengths = model.forward_infer(feats, lengths)
    expected = [(((n - 1) // 2 - 1) // 2 - 1) // 2 for n in (400, 173, 15)]
    assert out_lengths.numpy().tolist() == expected


def test_an_utterance_decodes_the_same_alone_or_padded_in_a_batch():
    model = _model()
    rng = np.random.default_rng(1)
    long = rng.normal(10, 3, (1, 300, 80)).astype("float32")
    short = rng.normal(10, 3, (1, 173, 80)).astype("float32")
    batch = np.concatenate([long, np.pad(short, ((0, 0), (0, 127), (0, 0)))])
    with paddle.no_grad():
        alone, n = model.forward_infer(paddle.to_tensor(short), paddle.to_tensor([173], dtype="int64"))
        padded, _ = model.forward_infer(paddle.to_tensor(batch), paddle.to_tensor([300, 173], dtype="int64"))
    n = int(n[0])
    np.testing.assert_allclose(padded.numpy()[1, :n], alone.numpy()[0, :n], atol=1e-4)
