"""DeepSpeech2 (PaddleSpeech asr0 `DeepSpeech2Model`; docs/deepspeech2.md): global CMVN, two 3x3
stride-2 convolutions, RNN layers (LSTM or GRU, bidirectional offline or forward-only online) each
followed by LayerNorm, optional ReLU Linear layers, and a CTC output layer.

Parameter names and shapes are PaddleSpeech's, so its checkpoints load without renaming:
`encoder.conv.conv.{0,2}` (the convolutions), `encoder.conv.out.0` (a Linear PaddleSpeech inherits
from its U2 subsampling class and never uses; kept so state dicts match both ways),
`encoder.rnn.L.weight_ih_l0` ... plus the aliases `encoder.rnn.L.0.cell{,_fw,_bw}.*` that Paddle's
nn.LSTM / nn.GRU register for the same tensors, `encoder.layernorm_list.L`, `encoder.fc_layers_list.N`,
`decoder.ctc_lo`. On top of those, `encoder.global_cmvn.{mean,istd}`: PaddleSpeech normalises in its
data pipeline, our models carry CMVN inside (as the U2 encoder does), so a PaddleSpeech checkpoint
plus its mean_std.json gives the same outputs from raw features.

Streaming (online model): the convolutions see 7 input frames per output frame and move 4 frames
per output frame, so chunk i of n output frames reads input frames [4*n*i, 4*n*i + 4*(n-1) + 7):
consecutive chunks overlap by 3 frames and the RNN carries its states across. Chunk by chunk gives
the full-utterance output exactly (PaddleSpeech `forward_chunk_by_chunk` / its inference loop).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import paddle
import paddle.nn.functional as F
from paddle import nn

from paddle_asr.config import AsrConfig
from paddle_asr.errors import AsrError
from paddle_asr.models.fast_cpu_ops import LayerNorm
from paddle_asr.models.layers import Conv2dSubsampling, GlobalCMVN
from paddle_asr.models.u2 import CTC

CONV_CHANNELS = 32  # fixed in PaddleSpeech (Conv2dSubsampling4Pure(feat_size, 32))
DIRECTIONS = {"forward": 1, "bidirect": 2, "bidirectional": 2}  # PaddleSpeech accepts both spellings
CTC_GRAD_NORM_TYPES = (None, "instance")


class DeepSpeech2Encoder(nn.Layer):
    """CMVN -> conv x4 subsampling -> [RNN -> LayerNorm] x N -> [Linear -> ReLU] x M."""

    def __init__(self, feat_size: int, *, num_conv_layers: int = 2, num_rnn_layers: int = 5,
                 rnn_size: int = 1024, rnn_direction: str = "bidirect", use_gru: bool = False,
                 num_fc_layers: int = 0, fc_layers_size_list: list[int] | tuple[int, ...] = (),
                 cmvn: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        super().__init__()
        if num_conv_layers != 2:
            raise AsrError(f"model.deepspeech2.num_conv_layers must be 2 (PaddleSpeech always builds two "
                           f"convolutions and ignores the setting), got {num_conv_layers}")
        if rnn_direction not in DIRECTIONS:
            raise AsrError(f"model.deepspeech2.rnn_direction '{rnn_direction}' unknown; use forward or bidirect")
        if num_rnn_layers < 1:
            raise AsrError(f"model.deepspeech2.num_rnn_layers must be >= 1, got {num_rnn_layers}")
        if len(fc_layers_size_list) < num_fc_layers:
            raise AsrError(f"model.deepspeech2.fc_layers_size_list needs {num_fc_layers} sizes "
                           f"(num_fc_layers), got {list(fc_layers_size_list)}")
        self.global_cmvn = GlobalCMVN(*cmvn) if cmvn is not None else None
        # Our Conv2dSubsampling at rate 4 has PaddleSpeech's layout: conv.0, conv.2 and the unused out.0.
        self.conv = Conv2dSubsampling(feat_size, CONV_CHANNELS, 4, CONV_CHANNELS)
        self.num_directions = DIRECTIONS[rnn_direction]
        self.rnn_direction = "forward" if self.num_directions == 1 else "bidirect"
        self.num_rnn_layers = num_rnn_layers
        self.rnn_size = rnn_size
        self.use_gru = use_gru
        rnn_cls = nn.GRU if use_gru else nn.LSTM
        width = self.num_directions * rnn_size
        in_size = self.conv.output_length(feat_size) * CONV_CHANNELS  # 39 x 32 = 1248 for 161 bins
        if in_size < 1:
            raise AsrError(f"{feat_size}-dim features are too narrow for the DeepSpeech2 convolutions")
        self.rnn = nn.LayerList()
        self.layernorm_list = nn.LayerList()
        for i in range(num_rnn_layers):
            # One single-layer nn.LSTM/GRU per layer, as PaddleSpeech: its names (weight_ih_l0 and
            # the 0.cell* aliases) come from Paddle, and LayerNorm sits between the layers.
            self.rnn.append(rnn_cls(in_size if i == 0 else width, rnn_size, num_layers=1,
                                    direction=self.rnn_direction))
            self.layernorm_list.append(LayerNorm(width))  # epsilon 1e-5, PaddleSpeech's default
        self.fc_layers_list = nn.LayerList()
        for size in fc_layers_size_list[:num_fc_layers]:
            self.fc_layers_list.append(nn.Linear(width, size))
            width = size
        self.output_size = width
        self.subsampling_rate = self.conv.subsampling_rate  # 4
        self.right_context = self.conv.right_context  # 6
        self.receptive_field = self.right_context + 1  # input frames behind one output frame

    @property
    def supports_streaming(self) -> bool:
        """Only a forward-only RNN can run chunk by chunk (a backward RNN needs the utterance's end)."""
        return self.num_directions == 1

    def output_length(self, lengths):
        """Output frames for `lengths` input frames (ints or tensors): PaddleSpeech's
        ((T - 1) // 2 - 1) // 2, the same integers as two (T - 3) // 2 + 1 steps."""
        return self.conv.output_length(lengths)

    def state_shape(self, batch: int | None) -> list[int | None]:
        """[num_rnn_layers * directions, batch, rnn_size]: PaddleSpeech's h/c state boxes."""
        return [self.num_rnn_layers * self.num_directions, batch, self.rnn_size]

    def forward(self, feats: paddle.Tensor, feat_lengths: paddle.Tensor, h_states: paddle.Tensor | None = None,
                c_states: paddle.Tensor | None = None):
        """[B, T, D] raw features, [B] lengths, optional initial states -> (encodings [B, T', d],
        lengths [B], final h [L*dirs, B, H], final c (the input c for a GRU, which has none)).

        The RNNs get the valid lengths: padded frames never enter the recurrence, a backward RNN
        starts at each utterance's own last frame, and the final states are those of the last
        valid frame. Outputs beyond the lengths carry no meaning (they still equal PaddleSpeech's).
        """
        x = self.global_cmvn(feats) if self.global_cmvn is not None else feats
        # Padded frames are zeros after CMVN, as in PaddleSpeech (its collator pads normalised
        # features). Zero-padded raw frames would become -mean * istd instead: at 161 bins three
        # mel bins hold no FFT bin, are constant, and get istd ~1e10, so padding would feed ~1e11
        # into the convolutions (harmless to valid outputs, but NaN in the GRU's backward pass).
        valid = paddle.arange(paddle.shape(x)[1], dtype="int64").unsqueeze(0) < feat_lengths.unsqueeze(1)
        x = x * valid.unsqueeze(-1).astype(x.dtype)
        x = self.conv.conv_features(x)
        # Clipped at 0: fewer than 3 input frames give no output frame (PaddleSpeech would pass -1 on).
        lengths = paddle.clip(self.output_length(feat_lengths), min=0)
        split_h = split_c = None
        if h_states is not None:
            split_h = paddle.split(h_states, self.num_rnn_layers, axis=0)
            if not self.use_gru:  # an LSTM given only h starts from zero cells
                split_c = paddle.split(c_states if c_states is not None else paddle.zeros_like(h_states),
                                       self.num_rnn_layers, axis=0)
        finals_h, finals_c = [], []
        for i, (rnn, norm) in enumerate(zip(self.rnn, self.layernorm_list)):
            init = None
            if split_h is not None:
                init = split_h[i] if self.use_gru else (split_h[i], split_c[i])
            x, final = rnn(x, init, lengths)
            if self.use_gru:
                finals_h.append(final)
            else:
                finals_h.append(final[0])
                finals_c.append(final[1])
            x = norm(x)
        for fc in self.fc_layers_list:
            x = F.relu(fc(x))
        h = paddle.concat(finals_h, axis=0)
        c = c_states if self.use_gru else paddle.concat(finals_c, axis=0)
        return x, lengths, h, c


class DeepSpeech2Model(nn.Layer):
    """`encoder` (DeepSpeech2Encoder) + `decoder` (the CTC output layer `decoder.ctc_lo`).

    The loss is PaddleSpeech's: CTC summed over the batch and divided by the batch size. Inference
    functions mirror U2Model's: `forward_encoder` (full utterance, with CTC log-probs) and
    `ctc_activation`; the online model adds `forward_chunk` with recurrent states in and out.
    """

    def __init__(self, feat_size: int, vocab_size: int, *, num_conv_layers: int = 2, num_rnn_layers: int = 5,
                 rnn_size: int = 1024, rnn_direction: str = "bidirect", use_gru: bool = False,
                 num_fc_layers: int = 0, fc_layers_size_list: list[int] | tuple[int, ...] = (),
                 blank_id: int = 0, ctc_grad_norm_type: str | None = None,
                 cmvn: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        super().__init__()
        if ctc_grad_norm_type not in CTC_GRAD_NORM_TYPES:
            # PaddleSpeech also lists "batch" and "frame", but on Paddle 3 its CTCLoss drops them
            # (nn.CTCLoss has no such arguments): they train exactly as null.
            raise AsrError(f"model.deepspeech2.ctc_grad_norm_type must be null or instance, got {ctc_grad_norm_type!r}")
        if not 0 <= blank_id < vocab_size:
            raise AsrError(f"model.deepspeech2.blank_id {blank_id} is outside the {vocab_size}-unit vocabulary")
        self.encoder = DeepSpeech2Encoder(
            feat_size, num_conv_layers=num_conv_layers, num_rnn_layers=num_rnn_layers, rnn_size=rnn_size,
            rnn_direction=rnn_direction, use_gru=use_gru, num_fc_layers=num_fc_layers,
            fc_layers_size_list=fc_layers_size_list, cmvn=cmvn)
        self.decoder = CTC(vocab_size, self.encoder.output_size, 0.0, blank=blank_id,
                           norm_by_times=ctc_grad_norm_type == "instance")
        self.vocab_size = vocab_size
        self.blank_id = blank_id

    def forward(self, feats, feat_lengths, labels, label_lengths) -> tuple[paddle.Tensor, dict[str, paddle.Tensor]]:
        """Training loss (CTC, batch sum / batch size) and its parts {"ctc"} for logging."""
        hs, hs_lengths, _, _ = self.encoder(feats, feat_lengths)
        return self.loss_from_encoder(hs, hs_lengths, labels, label_lengths)

    def loss_from_encoder(self, hs, hs_lengths, labels,
                          label_lengths) -> tuple[paddle.Tensor, dict[str, paddle.Tensor]]:
        """`forward`'s loss from the encoder's output [B, T', d] and lengths (as U2Model's)."""
        loss = self.decoder.loss(hs, hs_lengths, labels, label_lengths).sum() / hs.shape[0]
        return loss, {"ctc": loss}

    # ---- inference functions ----

    def forward_encoder(self, feats: paddle.Tensor, feat_lengths: paddle.Tensor):
        """Full utterance: features [B, T, D], lengths [B] -> (encoder_out [B, T', d], lengths [B],
        CTC log-probs [B, T', V]), as U2Model.forward_encoder."""
        hs, hs_lengths, _, _ = self.encoder(feats, feat_lengths)
        return hs, hs_lengths, self.decoder.log_softmax(hs)

    def ctc_activation(self, encoder_out: paddle.Tensor) -> paddle.Tensor:
        return self.decoder.log_softmax(encoder_out)

    def new_stream_state(self) -> DeepSpeech2StreamState:
        """Zero recurrent states for a new stream (online model only)."""
        if not self.encoder.supports_streaming:
            raise AsrError("this DeepSpeech2 model cannot stream: only the online model (rnn_direction: forward) "
                           "runs chunk by chunk; use decoding_chunk_size: -1")
        h, c = self.initial_states(1)
        return DeepSpeech2StreamState(h[:, 0], c[:, 0])

    def initial_states(self, batch: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Zero h and c states for the first chunk ([L, B, H] each; c is passed through by a GRU)."""
        shape = self.encoder.state_shape(batch)
        return np.zeros(shape, np.float32), np.zeros(shape, np.float32)

    def chunk_window(self, decoder_chunk_size: int) -> tuple[int, int]:
        """(input frames per chunk, input frames between chunk starts) for chunks of
        `decoder_chunk_size` output frames: ((n - 1) * 4 + 7, 4 * n), PaddleSpeech's chunk_size and
        chunk_stride. The 3-frame overlap is the convolutions' look-ahead."""
        if decoder_chunk_size < 1:
            raise AsrError(f"decoder_chunk_size must be >= 1, got {decoder_chunk_size}")
        rate = self.encoder.subsampling_rate
        return (decoder_chunk_size - 1) * rate + self.encoder.receptive_field, rate * decoder_chunk_size

    def forward_chunk(self, feats_chunk: paddle.Tensor, chunk_lengths: paddle.Tensor, h_states: paddle.Tensor,
                      c_states: paddle.Tensor):
        """One streaming step of the online model (PaddleSpeech `DeepSpeech2InferModel.forward`,
        with log-probs instead of probs): raw features [B, T_c, D] of a chunk window (see
        `chunk_window`), their valid lengths [B], states [L, B, H] -> (CTC log-probs [B, T_c', V],
        valid output lengths [B], next h, next c)."""
        if not self.encoder.supports_streaming:
            raise AsrError("chunk-by-chunk decoding needs the online model (model.deepspeech2.rnn_direction: forward)")
        hs, lengths, h, c = self.encoder(feats_chunk, chunk_lengths, h_states, c_states)
        return self.decoder.log_softmax(hs), lengths, h, c

    def forward_chunk_by_chunk(self, feats: paddle.Tensor, feat_lengths: paddle.Tensor, decoder_chunk_size: int,
                               encoder_out: bool = False) -> tuple[paddle.Tensor, paddle.Tensor]:
        """The online model over whole utterances, `decoder_chunk_size` output frames at a time,
        states carried across chunks: (CTC log-probs [B, T', V], lengths [B]), the same as
        `forward_encoder` (what streaming decoding and its tests rely on); with `encoder_out`, the
        RNN output before the CTC layer instead. The input is zero-padded
        at the end to whole chunk windows; padded frames only reach outputs beyond the lengths."""
        size, stride = self.chunk_window(decoder_chunk_size)
        batch, frames, dim = feats.shape
        total = max(int(self.encoder.output_length(frames)), 0)
        num_chunks = max(-(-total // decoder_chunk_size), 1)
        padded_len = (num_chunks - 1) * stride + size
        if padded_len > frames:
            feats = paddle.concat([feats, paddle.zeros([batch, padded_len - frames, dim], feats.dtype)], axis=1)
        if not self.encoder.supports_streaming:
            raise AsrError("chunk-by-chunk decoding needs the online model (model.deepspeech2.rnn_direction: forward)")
        h, c = (paddle.to_tensor(s) for s in self.initial_states(batch))
        outputs = []
        for i in range(num_chunks):
            start = i * stride
            chunk_lengths = paddle.clip(feat_lengths - start, min=0, max=size)
            hs, _, h, c = self.encoder(feats[:, start:start + size], chunk_lengths, h, c)
            outputs.append(hs)
        lengths = paddle.clip(self.encoder.output_length(feat_lengths), min=0)
        hs = paddle.concat(outputs, axis=1)[:, :total]
        return (hs if encoder_out else self.decoder.log_softmax(hs)), lengths


@dataclass
class DeepSpeech2StreamState:
    """One online DeepSpeech2 stream between chunks: the RNN states h and c [layers, rnn_size]
    (c stays zero for a GRU) and the stream's chunk window in input frames (0 before its first
    chunk). A shorter last window is zero-padded to that window, its length masking the padding,
    so every chunk of a stream has one shape (oneDNN builds kernels per shape)."""

    h: np.ndarray
    c: np.ndarray
    window: int = 0


def gather_rnn_states(xs: np.ndarray, states: list[DeepSpeech2StreamState]
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """B streams' chunk windows xs [B, W, D] and states -> (feats [B, W', D] zero-padded to the
    streams' window, feats_lengths [B], h and c [layers, B, rnn_size])."""
    if not states:
        raise AsrError("encode_chunks needs at least one stream state")
    xs = np.asarray(xs, np.float32)
    lengths = np.full(len(states), xs.shape[1], np.int64)
    width = max(xs.shape[1], *(s.window for s in states))
    if width > xs.shape[1]:
        xs = np.pad(xs, ((0, 0), (0, width - xs.shape[1]), (0, 0)))
    return xs, lengths, np.stack([s.h for s in states], axis=1), np.stack([s.c for s in states], axis=1)


def scatter_rnn_states(feats: np.ndarray, h: np.ndarray, c: np.ndarray | None) -> list[DeepSpeech2StreamState]:
    """The B streams' next states from the chunk's padded feats [B, W', D] and final h, c [layers,
    B, rnn_size] (c None: a GRU, zeros kept)."""
    c = np.zeros_like(h) if c is None else c
    return [DeepSpeech2StreamState(np.ascontiguousarray(h[:, b]), np.ascontiguousarray(c[:, b]), feats.shape[1])
            for b in range(h.shape[1])]


def build_deepspeech2(config: AsrConfig, cmvn: tuple[np.ndarray, np.ndarray]) -> DeepSpeech2Model:
    """The DeepSpeech2 network of a resolved config (the `model.deepspeech2` section alone)."""
    ds2 = config.model.deepspeech2
    return DeepSpeech2Model(
        config.input_dim, config.vocab_size, num_conv_layers=ds2.num_conv_layers,
        num_rnn_layers=ds2.num_rnn_layers, rnn_size=ds2.rnn_layer_size, rnn_direction=ds2.rnn_direction,
        use_gru=ds2.use_gru, num_fc_layers=ds2.num_fc_layers, fc_layers_size_list=ds2.fc_layers_size_list,
        blank_id=ds2.blank_id, ctc_grad_norm_type=ds2.ctc_grad_norm_type, cmvn=cmvn)
