#!/usr/bin/env python
"""Which dtype each layer of the model runs in under each `train.amp` mode, found by running it.

    python scripts/amp_report.py [--config conf/small.yaml] [--device cuda]

Forward hooks record the dtype of each module's output; the recurrences report the dtype they ran
in (`BiRNNCTC.recurrence_dtype`: with bf16 on CUDA they run in bfloat16 outside autocast, because
cuDNN's autocast wrapper for RNNs would run them in float16). One forward and backward per mode,
on a random batch; the table ends with whether every gradient was finite. On the CPU autocast is
off in training (`asr.runtime.autocast_context`), so every mode shows float32 there.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from asr.experiment import load_experiment_config  # noqa: E402
from asr.model import build_model  # noqa: E402
from asr.runtime import autocast_context, recurrent_dtype  # noqa: E402

MODES = ("none", "fp16", "bf16")


def layer_dtypes(model: torch.nn.Module, device: torch.device, amp: str, dim: int) -> dict[str, str]:
    """{layer name: output dtype} of one forward under `amp`, plus "recurrences" and "grads finite"."""
    seen: dict[str, str] = {}
    hooks = []
    for name, module in model.named_modules():
        if name and not list(module.children()) and not isinstance(module, torch.nn.RNNBase):
            def record(_module, _inputs, output, name=name):
                tensor = output[0] if isinstance(output, tuple) else output
                seen[name] = str(getattr(tensor, "data", tensor).dtype).removeprefix("torch.")
            hooks.append(module.register_forward_hook(record))
    model.rnn_dtype = recurrent_dtype(device, amp)
    model.zero_grad(set_to_none=True)
    features = torch.randn(4, 200, dim, device=device)
    lengths = torch.tensor([200, 150, 120, 60], device=device)
    try:
        with autocast_context(device, amp):
            log_probs, _ = model(features, lengths)
        scale = 1024.0 if amp == "fp16" else 1.0  # what a GradScaler does, for the finiteness check
        (log_probs.float().logsumexp(-1).mean() * scale).backward()
    finally:
        for hook in hooks:
            hook.remove()
    seen["recurrences"] = str(model.recurrence_dtype).removeprefix("torch.")
    seen["grads finite"] = str(all(torch.isfinite(p.grad).all().item() for p in model.parameters()
                                   if p.grad is not None))
    return seen


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="conf/small.yaml", help="experiment config (default conf/small.yaml)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    config = load_experiment_config(args.config)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model(config.model_config(29)).to(device).train()
    table = {amp: layer_dtypes(model, device, amp, config.features.dim) for amp in MODES}
    names = list(table["none"])
    width = max(len(n) for n in names)
    print(f"device {device}, {args.config}: output dtype of each layer per train.amp mode")
    print(f"{'layer':<{width}}  " + "  ".join(f"{m:>9}" for m in MODES))
    for name in names:
        print(f"{name:<{width}}  " + "  ".join(f"{table[m].get(name, '-'):>9}" for m in MODES))
    return 0


if __name__ == "__main__":
    sys.exit(main())
