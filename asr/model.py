"""The acoustic model: an optional convolutional front-end, a deep (bi)directional RNN, a CTC head.

Shapes, with B the batch, F input frames (10 ms each), D the feature dimension, T output frames
(F / subsample, rounded up), V the vocabulary (blank = 0):

    features (B, F, D), lengths (B,)
      -> conv front-end (optional)  (B, T, hidden)       2-D convs over (time, freq), DS2 style
      -> recurrent layers x L       (B, T, 2*hidden), or hidden if unidirectional
      -> linear + log-softmax       log_probs (B, T, V), out_lengths (B,)

`forward` returns the same pair in training and in evaluation; the CTC loss and the decoders both
take log-probabilities.

Padding never changes a result: the front-end zeroes padded frames after every layer (and its batch
norm takes statistics over valid frames only), the recurrent layers run on packed sequences (CUDA)
or read each utterance within its own length (elsewhere), and the norms and dropout between them
act on valid frames only. In evaluation an utterance gives the same
log-probs alone as beside a longer one (tests/test_model.py checks this for every variant).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from asr.errors import ConfigError
from asr.lengths import valid_mask

ENCODERS = ("birnn",)  # encoder types `build_model` knows
RNN_TYPES = ("rnn", "gru", "lstm")
FRONTENDS = ("none", "conv")
NORMS = ("none", "layer", "batch")
NONLINEARITIES = ("tanh", "relu")
# Time stride of each of the two conv layers for each time subsampling the front-end offers.
CONV_TIME_STRIDES = {1: (1, 1), 2: (2, 1), 3: (3, 1), 4: (2, 2)}
SUBSAMPLES = tuple(CONV_TIME_STRIDES)

# DS2's two conv layers, (time, freq) kernels; odd sizes with half-kernel padding keep the
# output frame t centred on input frame t * stride. Frequency is halved by each layer.
DS2_CONV_KERNELS = ((11, 41), (11, 21))
CONV_FREQ_STRIDE = 2
# DS2's clipped ReLU: min(max(x, 0), 20). It maps 0 to 0, so zeroed padding stays zero.
HARDTANH_MAX = 20.0


@dataclass(frozen=True)
class ModelConfig:
    """Size and shape of the acoustic model; plain values only, so it round-trips through YAML."""

    encoder: str = "birnn"  # the encoder type, one of ENCODERS (`build_model` maps it to a module)
    input_dim: int = 80  # feature dimension D (FeatureConfig.dim: mel bins or cepstra)
    vocab_size: int = 29  # output classes including the CTC blank (Tokenizer.vocab_size)
    frontend: str = "conv"  # "conv": 2-D conv stack (time subsampling); "none": features go straight to the RNN
    subsample: int = 4  # time subsampling of the conv front-end: 1, 2, 3 or 4 (must be 1 with frontend "none")
    conv_channels: int = 32  # channels of each conv layer
    # (time, freq) kernel of each of the two conv layers, odd sizes
    conv_kernels: tuple[tuple[int, int], ...] = DS2_CONV_KERNELS
    rnn_type: str = "gru"  # "rnn" (plain Elman recurrence), "gru" or "lstm"
    nonlinearity: str = "tanh"  # f of the plain recurrence, "tanh" or "relu" (rnn_type "rnn" only)
    hidden: int = 256  # units per direction in each recurrent layer; also the conv projection size
    layers: int = 3  # recurrent layers
    bidirectional: bool = True  # forward and backward directions, concatenated (2*hidden per frame)
    dropout: float = 0.1  # dropout probability between recurrent layers (not after the last)
    norm: str = "none"  # norm between recurrent layers: "none", "layer" or "batch" (over valid frames)

    def __post_init__(self) -> None:
        def check(key: str, ok: bool, expected: str) -> None:
            if not ok:
                raise ConfigError(f"model.{key}: expected {expected}, got {getattr(self, key)!r}")

        check("encoder", self.encoder in ENCODERS, f"one of {ENCODERS}")
        check("input_dim", self.input_dim >= 1, "a positive integer")
        check("vocab_size", self.vocab_size >= 2, "at least 2 (blank and one token)")
        check("frontend", self.frontend in FRONTENDS, f"one of {FRONTENDS}")
        check("subsample", self.subsample in SUBSAMPLES, f"one of {SUBSAMPLES}")
        check("subsample", self.frontend == "conv" or self.subsample == 1,
              "1 when frontend is 'none' (only the conv front-end subsamples)")
        check("conv_channels", self.conv_channels >= 1, "a positive integer")
        check("conv_kernels", len(self.conv_kernels) == 2
              and all(len(k) == 2 and all(isinstance(n, int) and n >= 1 and n % 2 == 1 for n in k)
                      for k in self.conv_kernels),
              "two [time, freq] pairs of odd positive sizes")
        check("rnn_type", self.rnn_type in RNN_TYPES, f"one of {RNN_TYPES}")
        check("nonlinearity", self.nonlinearity in NONLINEARITIES, f"one of {NONLINEARITIES}")
        check("hidden", self.hidden >= 1, "a positive integer")
        check("layers", self.layers >= 1, "a positive integer")
        check("dropout", 0.0 <= self.dropout < 1.0, "a probability in [0, 1)")
        check("norm", self.norm in NORMS, f"one of {NORMS}")


class ConvFrontend(nn.Module):
    """DS2-style 2-D convolutions over (time, freq), then a linear projection to `hidden`.

    Each layer: Conv2d (stride 2 or 1 in time, 2 in freq) -> batch norm -> hardtanh(0, 20), and
    padded frames set to zero. Batch norm statistics come from valid frames only, so in training,
    too, the amount of padding in a batch does not move them. In evaluation the norm is folded into
    the convolution, and the last layer's padding is left as it is (nothing reads it).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        time_strides = CONV_TIME_STRIDES[config.subsample]
        channels = config.conv_channels
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        in_channels, freq = 1, config.input_dim
        for (k_time, k_freq), s_time in zip(config.conv_kernels, time_strides):
            self.convs.append(nn.Conv2d(in_channels, channels, (k_time, k_freq), stride=(s_time, CONV_FREQ_STRIDE),
                                        padding=(k_time // 2, k_freq // 2), bias=False))  # bias: BN's shift
            # BatchNorm1d over (frames, channels, freq): statistics per channel over frames and freq.
            self.norms.append(nn.BatchNorm1d(channels))
            freq = _conv_out(freq, k_freq, CONV_FREQ_STRIDE)
            in_channels = channels
        self.out_freq = freq
        self.projection = nn.Linear(channels * freq, config.hidden)

    def output_lengths(self, lengths: Tensor) -> Tensor:
        """Valid output frames for `lengths` valid input frames, (B,) int64 -> (B,) int64."""
        for conv in self.convs:
            lengths = _conv_out(lengths, conv.kernel_size[0], conv.stride[0])
        return lengths

    def forward(self, features: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """features (B, F, D), lengths (B,) -> ((B, T, hidden), out_lengths (B,))."""
        x = features.unsqueeze(1)  # (B, 1, F, D): channels, time, freq
        x = x.masked_fill(~valid_mask(lengths, x.size(2))[:, None, :, None], 0.0)  # callers' padding may be anything
        for index, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            lengths = _conv_out(lengths, conv.kernel_size[0], conv.stride[0])
            mask = valid_mask(lengths, _conv_out(x.size(2), conv.kernel_size[0], conv.stride[0]))  # (B, F')
            if not norm.training:
                x = F.hardtanh(_conv_with_norm(conv, norm, x), 0.0, HARDTANH_MAX, inplace=True)
                if index < len(self.convs) - 1:  # the next conv reads across each utterance's end
                    x = x.mul_(mask[:, None, :, None].to(x.dtype))  # zero padding; a float mask is 7x faster here
                continue
            x = conv(x)  # (B, C, F', D')
            # Normalise the valid frames only and scatter them back into zeros: the padding is
            # zero again and takes no part in the batch statistics.
            frames = x.transpose(1, 2)[mask]  # (N valid, C, D')
            frames = F.hardtanh(norm(frames), 0.0, HARDTANH_MAX)
            out = x.new_zeros(x.size(0), x.size(2), x.size(1), x.size(3))  # (B, F', C, D')
            out[mask] = frames.to(out.dtype)
            x = out.transpose(1, 2)  # (B, C, F', D')
        batch, channels, frames, freq = x.shape
        x = x.permute(0, 2, 1, 3).reshape(batch, frames, channels * freq)  # (B, T, C*D')
        return self.projection(x), lengths  # padded frames: meaningless, never read


def _conv_with_norm(conv: nn.Conv2d, norm: nn.BatchNorm1d, x: Tensor) -> Tensor:
    """conv then the norm in evaluation (a fixed affine map per channel), as one convolution with
    the norm folded into its weights and bias. Valid frames only are meaningful (padding is not
    zeroed here)."""
    scale = norm.weight * torch.rsqrt(norm.running_var + norm.eps)  # (C,)
    bias = norm.bias - norm.running_mean * scale
    out = F.conv2d(x, conv.weight * scale[:, None, None, None], None, conv.stride, conv.padding)
    # The bias added after: oneDNN's 1-input-channel conv is ~1.5x slower with a bias (torch 2.14, CPU).
    return out.add_(bias[:, None, None])


def _conv_out(size, kernel: int, stride: int):
    """Output size of a convolution with padding kernel // 2 (odd kernel), as PyTorch computes it."""
    padding = kernel // 2
    if isinstance(size, Tensor):
        return torch.div(size + 2 * padding - kernel, stride, rounding_mode="floor") + 1
    return (size + 2 * padding - kernel) // stride + 1


class BiRNNCTC(nn.Module):
    """Deep (bi)directional RNN with a CTC head, after Deep Speech 2.

    The seed's recurrence S_t = f(U·X_t + W·S_{t-1}), output O_t = softmax(V·S_t) maps onto the
    code as: U = `rnns[l].weight_ih_l0` (and `..._reverse` for the backward direction), W =
    `rnns[l].weight_hh_l0`, f = `config.nonlinearity` for rnn_type "rnn" (GRU and LSTM replace the
    single recurrence by their gated ones, each gate with its own slice of U and W), and
    V = `head.weight`. Each layer is a single-layer `nn.RNN`/`nn.GRU`/`nn.LSTM`, so that norm and
    dropout can sit between layers; the two directions are concatenated, so layer l > 0 takes
    2 * hidden inputs.

    Two ways to run the recurrent layers, equal up to rounding (a test checks it):
    packed sequences (cuDNN on CUDA runs them natively), and padded batches where the backward
    direction reads each utterance reversed within its length (on CPU PyTorch's packed path
    slices the input per time step, and the backward of those slices costs frames x batch
    frames: 2-3x slower). `use_packed` picks one: None (default) = packed on CUDA and for inference
    without gradients, padded for training on the CPU.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        # None: packed on CUDA and for inference, padded for CPU training (same results)
        self.use_packed: bool | None = None
        # Run the recurrences in this dtype, outside autocast, weights cast on the fly (None: as
        # autocast says). bf16 AMP sets bfloat16: cuDNN's autocast wrapper for RNNs casts to float16
        # whatever dtype autocast asks for (aten/src/ATen/cudnn/AutocastRNN.cpp), and float16
        # without a GradScaler underflows. Set by `asr.runtime.recurrent_dtype`.
        self.rnn_dtype: torch.dtype | None = None
        self.recurrence_dtype: torch.dtype | None = None  # what the last forward's recurrences ran in
        self.frontend = ConvFrontend(config) if config.frontend == "conv" else None
        rnn_input = config.hidden if self.frontend is not None else config.input_dim
        directions = 2 if config.bidirectional else 1
        self.rnns = nn.ModuleList()
        self.norms = nn.ModuleList()  # norms[l] sits before rnns[l + 1]
        for layer in range(config.layers):
            self.rnns.append(_make_rnn(config, rnn_input))
            rnn_input = directions * config.hidden
            if layer < config.layers - 1:
                self.norms.append(_make_norm(config.norm, rnn_input))
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(rnn_input, config.vocab_size)

    @property
    def subsample(self) -> int:
        """Input frames per output frame."""
        return self.config.subsample if self.frontend is not None else 1

    def output_lengths(self, lengths: Tensor) -> Tensor:
        """Output frames for `lengths` input frames: (B,) -> (B,) int64."""
        lengths = torch.as_tensor(lengths, dtype=torch.int64)
        return self.frontend.output_lengths(lengths) if self.frontend is not None else lengths

    def flatten_parameters(self) -> None:
        """Repack the recurrent weights into cuDNN's contiguous buffer (a no-op on CPU).

        `.to()`/`.cuda()` already do this; call it after anything that swaps parameter storage.
        """
        for rnn in self.rnns:
            rnn.flatten_parameters()

    def forward(self, features: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Log-probabilities over the vocabulary for each output frame.

        features: (B, F, D) float, padding frames may hold anything; lengths: (B,) valid frames.
        Returns log_probs (B, T, V) with T = output_lengths(F), and out_lengths (B,) int64 on
        the features' device. Frames past out_lengths hold a valid but meaningless distribution.
        """
        lengths = lengths.to(device=features.device, dtype=torch.int64)
        if self.frontend is not None:
            frames, out_lengths = self.frontend(features, lengths)  # (B, T, hidden)
        else:
            frames, out_lengths = features, lengths  # (B, F, D)
        # Packed sequences are what cuDNN runs, and on the CPU the fastest forward pass (~15%);
        # only their CPU backward is slow, so CPU training takes the padded path.
        packed = self.use_packed
        if packed is None:
            packed = frames.is_cuda or not (self.training or torch.is_grad_enabled())
        run = self._run_packed if packed else self._run_padded
        outputs = run(frames, out_lengths)  # (B, T, directions * hidden)
        log_probs = F.log_softmax(self.head(outputs), dim=-1)  # (B, T, V)
        return log_probs, out_lengths

    def _between(self, layer: int, frames: Tensor) -> Tensor:
        """Norm and dropout after recurrent layer `layer`, on valid frames (N, H) only."""
        return self.dropout(self.norms[layer](frames))

    def _run_packed(self, frames: Tensor, lengths: Tensor) -> Tensor:
        # pack_padded_sequence refuses empty sequences; a zero-length utterance runs on one
        # (padding) frame and keeps out_lengths 0, so CTC sees it as empty.
        packed = pack_padded_sequence(frames, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
        for layer, rnn in enumerate(self.rnns):
            if layer > 0:  # packed data holds valid frames only: (sum of T, H)
                data = self._between(layer - 1, packed.data)
                packed = PackedSequence(data, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices)
            packed = self._recur(rnn, packed)
        outputs, _ = pad_packed_sequence(packed, batch_first=True, total_length=frames.size(1))
        return outputs  # (B, T, H), zero past each length

    def _recur(self, rnn: nn.RNNBase, packed: PackedSequence) -> PackedSequence:
        """One recurrent layer over a packed sequence, in `rnn_dtype` when it is set."""
        if self.rnn_dtype is None:
            out, _ = rnn(packed)
            self.recurrence_dtype = out.data.dtype
            return out
        with torch.autocast(packed.data.device.type, enabled=False):
            data = packed.data.to(self.rnn_dtype)
            weights = [w.to(self.rnn_dtype) for w in rnn._flat_weights]
            initial = data.new_zeros(2 if rnn.bidirectional else 1, int(packed.batch_sizes[0]), rnn.hidden_size)
            hx = (initial, initial) if isinstance(rnn, nn.LSTM) else initial
            out = _recurrence(rnn)(data, packed.batch_sizes, hx, weights, True, 1, 0.0, rnn.training,
                                   rnn.bidirectional)[0]
        self.recurrence_dtype = out.dtype
        return PackedSequence(out.to(packed.data.dtype), packed.batch_sizes, packed.sorted_indices,
                              packed.unsorted_indices)

    def _run_padded(self, frames: Tensor, lengths: Tensor) -> Tensor:
        # The forward direction reaches a padding frame only after every valid one; the backward
        # direction reads each utterance reversed within its length, so padding comes last there
        # too. What padding frames hold never reaches a valid frame.
        mask = valid_mask(lengths, frames.size(1))  # (B, T)
        reverse = _reverse_index(lengths, frames.size(1))  # (B, T)
        for layer, rnn in enumerate(self.rnns):
            if layer > 0:
                normed = self._between(layer - 1, frames[mask])  # (N valid, H)
                frames = frames.new_zeros(frames.shape[:2] + normed.shape[1:]).masked_scatter(mask[..., None], normed)
            outputs = self._run_direction(rnn, frames, 0)  # (B, T, hidden)
            if rnn.bidirectional:
                backward = self._run_direction(rnn, _gather_frames(frames, reverse), 1)
                outputs = torch.cat([outputs, _gather_frames(backward, reverse)], dim=-1)  # (B, T, 2*hidden)
            frames = outputs
        return frames  # (B, T, H); past each length: meaningless

    def _run_direction(self, rnn: nn.RNNBase, frames: Tensor, direction: int) -> Tensor:
        """One direction of a single-layer `rnn` over padded frames (B, T, I) -> (B, T, hidden),
        with that direction's own weights (the *_reverse ones for direction 1), in `rnn_dtype`
        when it is set."""
        suffix = "_l0_reverse" if direction else "_l0"
        weights = [getattr(rnn, name + suffix) for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        cast = self.rnn_dtype is not None
        with torch.autocast(frames.device.type, enabled=False) if cast else contextlib.nullcontext():
            inputs = frames.to(self.rnn_dtype) if cast else frames
            weights = [w.to(self.rnn_dtype) for w in weights] if cast else weights
            initial = inputs.new_zeros(1, frames.size(0), rnn.hidden_size)
            hx = (initial, initial) if isinstance(rnn, nn.LSTM) else initial
            # The functional forms behind nn.RNN/GRU/LSTM: (input, hx, weights, has_biases,
            # num_layers, dropout, train, bidirectional, batch_first).
            out = _recurrence(rnn)(inputs, hx, weights, True, 1, 0.0, rnn.training, False, True)[0]
        self.recurrence_dtype = out.dtype
        return out.to(frames.dtype) if cast else out


def _reverse_index(lengths: Tensor, frames: int) -> Tensor:
    """(B, T) index that reverses frames [0, length) of each row and leaves the padding in place."""
    steps = torch.arange(frames, device=lengths.device)[None, :]  # (1, T)
    return torch.where(valid_mask(lengths, frames), lengths[:, None] - 1 - steps, steps)


def _gather_frames(frames: Tensor, index: Tensor) -> Tensor:
    """frames (B, T, H), index (B, T) -> frames[b, index[b, t]]."""
    return frames.gather(1, index[..., None].expand_as(frames))


def _recurrence(rnn: nn.RNNBase):
    """The functional recurrence behind `rnn` (torch.lstm, torch.gru, torch.rnn_tanh/relu): one
    function takes padded input (hx, weights, ..., batch_first) and packed data (batch_sizes, hx, ...)."""
    if isinstance(rnn, nn.LSTM):
        return torch.lstm
    if isinstance(rnn, nn.GRU):
        return torch.gru
    return torch.rnn_tanh if rnn.nonlinearity == "tanh" else torch.rnn_relu


def _make_rnn(config: ModelConfig, input_size: int) -> nn.RNNBase:
    kwargs = dict(input_size=input_size, hidden_size=config.hidden, num_layers=1, batch_first=True,
                  bidirectional=config.bidirectional)
    if config.rnn_type == "rnn":
        return nn.RNN(nonlinearity=config.nonlinearity, **kwargs)
    return nn.GRU(**kwargs) if config.rnn_type == "gru" else nn.LSTM(**kwargs)


def _make_norm(norm: str, size: int) -> nn.Module:
    if norm == "layer":
        return nn.LayerNorm(size)
    if norm == "batch":
        return nn.BatchNorm1d(size)
    return nn.Identity()


def build_model(config: ModelConfig) -> nn.Module:
    """The acoustic model `config` describes: the one place that knows the encoder types.

    Every model built here keeps one contract: `forward(features (B, F, D), lengths (B,))` returns
    `(log_probs (B, T, V), out_lengths (B,))`, and it has `output_lengths(lengths)` and `subsample`.
    """
    if config.encoder == "birnn":
        return BiRNNCTC(config)
    raise ConfigError(f"model.encoder: expected one of {ENCODERS}, got {config.encoder!r}")


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (elements)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
