import itertools
import math

import pytest
import torch
from torch import nn

from asr.errors import ConfigError
from asr.model import BiRNNCTC, ModelConfig, count_parameters

DIM = 20
VOCAB = 7


def tiny_config(**changes) -> ModelConfig:
    values = dict(input_dim=DIM, vocab_size=VOCAB, conv_channels=4, hidden=8, layers=2, dropout=0.3)
    values.update(changes)
    return ModelConfig(**values)


def padded_batch(lengths: list[int], dim: int = DIM, seed: int = 0, pad_value: float = 0.0):
    """Random features (B, max(lengths), dim) whose padding holds `pad_value`."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.full((len(lengths), max(lengths), dim), pad_value)
    for i, length in enumerate(lengths):
        features[i, :length] = torch.randn(length, dim, generator=generator)
    return features, torch.tensor(lengths)


def warm_up_batch_norm(model: BiRNNCTC) -> None:
    """A few training forwards so that batch-norm running stats are not the identity."""
    model.train()
    with torch.no_grad():
        for seed in range(3):
            features, lengths = padded_batch([30, 41, 25], seed=100 + seed)
            model(features * 3 + 1, lengths)
    model.eval()


VARIANTS = list(itertools.product(["rnn", "gru", "lstm"], ["none", "conv"], ["none", "layer", "batch"]))


def assert_padding_invariant(model: BiRNNCTC, short: int = 23, long: int = 57) -> int:
    """Each utterance of a (short, long) batch gives the log-probs it gives alone; returns the
    short one's output frames."""
    warm_up_batch_norm(model)
    # The short utterance first, so packing must reorder; its padding holds garbage.
    features, lengths = padded_batch([short, long], seed=1, pad_value=5.0)
    alone_features = features[:1, :short]
    with torch.no_grad():
        batch_log_probs, batch_lengths = model(features, lengths)
        alone_log_probs, alone_lengths = model(alone_features, torch.tensor([short]))
    assert batch_lengths[0] == alone_lengths[0] == alone_log_probs.size(1)
    valid = int(alone_lengths[0])
    torch.testing.assert_close(batch_log_probs[0, :valid], alone_log_probs[0], atol=1e-5, rtol=0)
    # And the long one alone matches its batch row too.
    with torch.no_grad():
        long_alone, _ = model(features[1:], lengths[1:])
    torch.testing.assert_close(batch_log_probs[1, : int(batch_lengths[1])], long_alone[0], atol=1e-5, rtol=0)
    return valid


@pytest.mark.parametrize("use_packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("rnn_type,frontend,norm", VARIANTS)
def test_padding_invariance(rnn_type, frontend, norm, use_packed):
    torch.manual_seed(0)
    subsample = 4 if frontend == "conv" else 1
    model = BiRNNCTC(tiny_config(rnn_type=rnn_type, frontend=frontend, subsample=subsample, norm=norm))
    model.use_packed = use_packed
    assert_padding_invariant(model)


@pytest.mark.parametrize("subsample", [2, 3])
def test_padding_invariance_at_other_strides(subsample):
    # The stride-2 and stride-3 conv stacks (one strided layer) pad differently from stride 4.
    torch.manual_seed(0)
    model = BiRNNCTC(tiny_config(rnn_type="lstm", subsample=subsample, norm="layer"))
    assert assert_padding_invariant(model, short=22, long=58) == math.ceil(22 / subsample)


@pytest.mark.parametrize("norm", ["none", "batch"])
def test_padding_does_not_change_training_outputs(norm):
    """In training, batch-norm statistics come from valid frames only: extra padding changes nothing."""
    torch.manual_seed(0)
    model = BiRNNCTC(tiny_config(norm=norm, dropout=0.0)).train()
    features, lengths = padded_batch([31, 18, 26], seed=2)
    more_padding = torch.cat([features, torch.full((3, 20, DIM), -3.0)], dim=1)
    log_probs, out_lengths = model(features, lengths)
    padded_log_probs, padded_lengths = model(more_padding, lengths)
    assert torch.equal(out_lengths, padded_lengths)
    for i, length in enumerate(out_lengths.tolist()):
        torch.testing.assert_close(padded_log_probs[i, :length], log_probs[i, :length], atol=1e-5, rtol=0)


@pytest.mark.parametrize("rnn_type,norm,bidirectional", [("rnn", "batch", True), ("gru", "layer", True),
                                                         ("lstm", "batch", True), ("gru", "none", False)])
def test_packed_and_padded_paths_agree(rnn_type, norm, bidirectional):
    """The two ways of running the recurrent layers give the same outputs and gradients, in training."""
    torch.manual_seed(0)
    model = BiRNNCTC(tiny_config(rnn_type=rnn_type, norm=norm, bidirectional=bidirectional, dropout=0.0)).train()
    features, lengths = padded_batch([30, 45, 17], seed=4, pad_value=2.0)
    results = []
    for use_packed in (True, False):
        model.use_packed = use_packed
        model.zero_grad()
        log_probs, out_lengths = model(features, lengths)
        mask = torch.arange(log_probs.size(1))[None, :] < out_lengths[:, None]
        (log_probs[mask] * torch.linspace(-1, 1, VOCAB)).sum().backward()
        results.append((log_probs[mask].detach(), [p.grad.clone() for p in model.parameters()]))
    (packed, packed_grads), (padded, padded_grads) = results
    torch.testing.assert_close(padded, packed, atol=1e-5, rtol=1e-5)
    for padded_grad, packed_grad in zip(padded_grads, packed_grads):
        torch.testing.assert_close(padded_grad, packed_grad, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("subsample", [1, 2, 3, 4])
def test_output_lengths_match_conv_arithmetic(subsample):
    torch.manual_seed(0)
    model = BiRNNCTC(tiny_config(subsample=subsample, layers=1)).eval()
    input_lengths = torch.arange(1, 70)
    expected = torch.tensor([math.ceil(length / subsample) for length in input_lengths.tolist()])
    assert torch.equal(model.output_lengths(input_lengths), expected)
    assert model.subsample == subsample
    with torch.no_grad():
        for length in input_lengths.tolist():
            log_probs, out_lengths = model(torch.randn(1, length, DIM), torch.tensor([length]))
            assert log_probs.shape == (1, expected[length - 1], VOCAB)
            assert out_lengths.tolist() == [expected[length - 1]]


def test_no_frontend_keeps_frame_count():
    model = BiRNNCTC(tiny_config(frontend="none", subsample=1)).eval()
    assert model.subsample == 1
    lengths = torch.tensor([5, 17])
    assert torch.equal(model.output_lengths(lengths), lengths)


@pytest.mark.parametrize("training", [True, False])
def test_shapes_and_normalised_log_probs(training):
    torch.manual_seed(0)
    model = BiRNNCTC(tiny_config(norm="layer"))
    model.train(training)
    features, lengths = padded_batch([40, 13, 29])
    log_probs, out_lengths = model(features, lengths)
    assert log_probs.shape == (3, 10, VOCAB)
    assert out_lengths.dtype == torch.int64
    assert out_lengths.tolist() == [10, 4, 8]
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(3, 10))


def test_zero_length_utterance_runs_and_reports_zero_frames():
    model = BiRNNCTC(tiny_config()).eval()
    features, _ = padded_batch([12, 12])
    log_probs, out_lengths = model(features, torch.tensor([12, 0]))
    assert out_lengths.tolist() == [3, 0]
    assert torch.isfinite(log_probs).all()


@pytest.mark.parametrize("rnn_type,norm", [("rnn", "batch"), ("gru", "layer"), ("lstm", "none")])
def test_gradients_reach_every_parameter(rnn_type, norm):
    torch.manual_seed(0)
    model = BiRNNCTC(tiny_config(rnn_type=rnn_type, norm=norm, dropout=0.0)).train()
    features, lengths = padded_batch([36, 28])
    log_probs, out_lengths = model(features, lengths)
    targets = torch.tensor([[1, 2, 3], [4, 5, 0]])
    loss = nn.CTCLoss(blank=0)(log_probs.transpose(0, 1), targets, out_lengths, torch.tensor([3, 2]))
    loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name


def test_plain_rnn_matches_the_seed_recurrence():
    """S_t = f(U x_t + W S_{t-1} + b), log_probs_t = log_softmax(V S_t + c), with U, W, V as documented."""
    torch.manual_seed(0)
    for nonlinearity, f in [("tanh", torch.tanh), ("relu", torch.relu)]:
        config = tiny_config(frontend="none", subsample=1, rnn_type="rnn", nonlinearity=nonlinearity, layers=1,
                             bidirectional=False)
        model = BiRNNCTC(config).eval()
        rnn = model.rnns[0]
        U, W, V = rnn.weight_ih_l0, rnn.weight_hh_l0, model.head.weight
        bias = rnn.bias_ih_l0 + rnn.bias_hh_l0
        features = torch.randn(1, 9, DIM)
        state = torch.zeros(config.hidden)
        expected = []
        for x in features[0]:
            state = f(U @ x + W @ state + bias)
            expected.append(torch.log_softmax(V @ state + model.head.bias, dim=-1))
        with torch.no_grad():
            log_probs, _ = model(features, torch.tensor([9]))
        torch.testing.assert_close(log_probs[0], torch.stack(expected).detach(), atol=1e-5, rtol=1e-5)


def test_count_parameters_matches_formula():
    config = tiny_config(frontend="none", subsample=1, rnn_type="rnn", layers=1, bidirectional=False)
    hidden = config.hidden
    expected = hidden * DIM + hidden * hidden + 2 * hidden + hidden * VOCAB + VOCAB
    assert count_parameters(BiRNNCTC(config)) == expected
    # Bidirectional GRU, two layers: the second takes 2*hidden inputs; 3 gates each.
    config = tiny_config(frontend="none", subsample=1, rnn_type="gru", layers=2)
    gru = lambda inputs: 2 * 3 * (hidden * inputs + hidden * hidden + 2 * hidden)  # noqa: E731
    assert count_parameters(BiRNNCTC(config)) == gru(DIM) + gru(2 * hidden) + 2 * hidden * VOCAB + VOCAB


def test_tiny_model_overfits_one_batch():
    torch.manual_seed(0)
    model = BiRNNCTC(tiny_config(hidden=32, conv_channels=8, subsample=2, dropout=0.0)).train()
    features, lengths = padded_batch([40, 32], seed=3)
    targets = torch.tensor([[1, 2, 3, 4, 5], [6, 5, 4, 0, 0]])
    target_lengths = torch.tensor([5, 3])
    ctc = nn.CTCLoss(blank=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(100):
        log_probs, out_lengths = model(features, lengths)
        loss = ctc(log_probs.transpose(0, 1), targets, out_lengths, target_lengths)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0], (losses[0], losses[-1])
    model.eval()
    with torch.no_grad():
        log_probs, out_lengths = model(features, lengths)
    # Greedy CTC decoding of the first utterance recovers its targets.
    best = log_probs[0, : int(out_lengths[0])].argmax(-1).tolist()
    collapsed = [token for token, previous in zip(best, [None] + best[:-1]) if token != previous and token != 0]
    assert collapsed == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("key,value", [("rnn_type", "transformer"), ("frontend", "vgg"), ("subsample", 8),
                                       ("norm", "group"), ("nonlinearity", "sigmoid"), ("dropout", 1.5),
                                       ("hidden", 0)])
def test_config_rejects_bad_values_naming_the_key(key, value):
    with pytest.raises(ConfigError, match=key):
        ModelConfig(**{key: value})


def test_config_rejects_subsampling_without_frontend():
    with pytest.raises(ConfigError, match="subsample"):
        ModelConfig(frontend="none", subsample=4)


def test_eval_frontend_matches_normalising_valid_frames_only():
    """In evaluation the front-end's batch norm runs on the whole tensor and zeroes padding after;
    the result equals normalising the valid frames alone (the training-time formulation)."""
    import torch.nn.functional as F

    from asr.model import HARDTANH_MAX

    torch.manual_seed(0)
    model = BiRNNCTC(tiny_config(subsample=4))
    warm_up_batch_norm(model)
    frontend = model.frontend
    features, lengths = padded_batch([37, 12, 29], seed=3, pad_value=-4.0)
    with torch.no_grad():
        out, out_lengths = frontend(features, lengths)
        # Reference: conv, then the norm on the gathered valid frames, scattered into zeros.
        x = features.unsqueeze(1).masked_fill(
            (torch.arange(features.size(1)) >= lengths[:, None])[:, None, :, None], 0.0)
        frame_lengths = lengths
        for conv, norm in zip(frontend.convs, frontend.norms):
            x = conv(x)
            frame_lengths = frontend.output_lengths(lengths) if conv is frontend.convs[-1] else (
                torch.div(frame_lengths + 2 * (conv.kernel_size[0] // 2) - conv.kernel_size[0],
                          conv.stride[0], rounding_mode="floor") + 1)
            mask = torch.arange(x.size(2)) < frame_lengths[:, None]
            frames = F.hardtanh(norm(x.transpose(1, 2)[mask]), 0.0, HARDTANH_MAX)
            zeros = torch.zeros(x.size(0), x.size(2), x.size(1), x.size(3))
            zeros[mask] = frames
            x = zeros.transpose(1, 2)
        reference = frontend.projection(x.permute(0, 2, 1, 3).reshape(x.size(0), x.size(2), -1))
    assert torch.equal(out_lengths, frame_lengths)
    for i, n in enumerate(out_lengths.tolist()):
        torch.testing.assert_close(out[i, :n], reference[i, :n], atol=1e-5, rtol=0)


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("rnn_type", ["lstm", "gru", "rnn"])
def test_recurrences_run_in_the_dtype_asked_for(rnn_type, packed):
    """rnn_dtype (what bf16 AMP sets on CUDA): the recurrences run in bfloat16 outside autocast,
    the rest of the model keeps its dtype, the result is close to float32, and the float32
    weights get finite gradients."""
    torch.manual_seed(0)
    model = BiRNNCTC(tiny_config(rnn_type=rnn_type, dropout=0.0)).train()
    model.use_packed = packed
    features, lengths = torch.randn(3, 40, DIM), torch.tensor([40, 31, 17])
    reference, _ = model(features, lengths)
    assert model.recurrence_dtype == torch.float32
    model.rnn_dtype = torch.bfloat16
    log_probs, _ = model(features, lengths)
    assert model.recurrence_dtype == torch.bfloat16 and log_probs.dtype == torch.float32
    valid = torch.arange(log_probs.size(1))[None, :] < model.output_lengths(lengths)[:, None]
    torch.testing.assert_close(log_probs[valid], reference[valid], atol=0.1, rtol=0.05)
    log_probs[valid].sum().backward()
    weight = model.rnns[0].weight_hh_l0
    assert weight.dtype == torch.float32 and weight.grad is not None and torch.isfinite(weight.grad).all()


def test_recurrent_dtype_follows_the_amp_mode():
    from asr.runtime import recurrent_dtype

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert recurrent_dtype(cuda, "bf16") == torch.bfloat16
    assert recurrent_dtype(cuda, "fp16") is None  # autocast's float16, with a GradScaler
    assert recurrent_dtype(cuda, "none") is None and recurrent_dtype(cpu, "bf16") is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (scripts/gpu_check.sh runs it)")
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_cuda_amp_runs_the_recurrences_in_the_configured_dtype(amp):
    """On CUDA under each AMP mode: the RNN ran in the dtype the config names, gradients finite."""
    from asr.runtime import AMP_DTYPES, autocast_context, recurrent_dtype

    device = torch.device("cuda")
    torch.manual_seed(0)
    model = BiRNNCTC(tiny_config(rnn_type="lstm", dropout=0.0)).to(device).train()
    model.rnn_dtype = recurrent_dtype(device, amp)
    features, lengths = torch.randn(3, 40, DIM, device=device), torch.tensor([40, 31, 17], device=device)
    scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None
    with autocast_context(device, amp):
        log_probs, _ = model(features, lengths)
    assert model.recurrence_dtype == AMP_DTYPES[amp]
    loss = log_probs.float().logsumexp(-1).mean()
    (scaler.scale(loss) if scaler else loss).backward()
    if scaler:
        scaler.unscale_(torch.optim.SGD(model.parameters(), lr=0.0))
    for rnn in model.rnns:
        assert torch.isfinite(rnn.weight_hh_l0.grad).all()


def test_amp_report_lists_every_layer_per_mode(capsys):
    """scripts/amp_report.py (run by scripts/gpu_check.sh): on the CPU every mode is float32."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "amp_report.py"
    spec = importlib.util.spec_from_file_location("amp_report", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--config", str(path.parents[1] / "conf" / "tiny.yaml"), "--device", "cpu"]) == 0
    rows = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()[2:]}
    assert rows["recurrences"] == ["float32"] * 3 and rows["grads"] == ["finite", "True", "True", "True"]
    assert {"frontend.convs.0", "frontend.projection", "head"} <= rows.keys()
