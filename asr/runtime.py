"""Where a process runs: device, DDP rank and world (under torchrun), mixed precision, RNG
state, and the stop signal; shared by training and inference.

    torchrun --nproc_per_node 4 -m asr.cli train ...   (WORLD_SIZE, RANK, LOCAL_RANK from torchrun)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from asr.device import resolve_device
from asr.errors import ConfigError

log = logging.getLogger("asr.train")


@dataclass
class Runtime:
    """Where this process runs: DDP rank and world, the device, AMP in effect."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    amp: str = "none"
    owns_process_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def process_cores() -> int:
    """The cores this process may run on, shared with the other processes of this node (torchrun's
    LOCAL_WORLD_SIZE)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def fitting_threads(loader_workers: int) -> int:
    """Intra-op threads for a training process so that it and its loader workers (one thread each)
    never ask for more threads than the cores it may run on (`process_cores`). One more thread
    than cores makes OpenMP's threads wait on each other whenever anything else runs (measured:
    training 20-100x slower beside one busy process, instead of 2x)."""
    return max(1, process_cores() - loader_workers)


def frontend_ahead(device: torch.device, setting: str = "auto") -> bool:
    """Whether training computes the next batches' front-end in a thread beside the model's step
    (train.frontend_thread). "auto": on the CPU, when the process trains on one intra-op thread and
    has a second core; a second intra-op thread adds nothing to a narrow LSTM's step (measured on 2
    cores: 139 and 142 audio-s/s), while the front-end in a thread takes its share of the step off
    the first core (scripts/bench_train.py, conf/demo.yaml: 161 and 160 audio-s/s against 135 and
    141 inline). Off on CUDA, whose kernels already run beside Python."""
    if setting != "auto":
        return setting == "always"
    return device.type == "cpu" and torch.get_num_threads() == 1 and process_cores() >= 2


def setup_runtime(device_name: str = "auto", amp: str = "none", threads: int = 0, loader_workers: int = 0) -> Runtime:
    """Pick the device ("auto", "cpu", "cuda", "cuda:N": train.device), the AMP mode in effect
    (train.amp; "none" off CUDA) and, under torchrun (WORLD_SIZE > 1), join the process group from
    the environment: backend nccl on CUDA, gloo on CPU. Sets torch's CPU threads: `threads`, or
    when 0 `fitting_threads(loader_workers)`."""
    torch.set_num_threads(threads or fitting_threads(loader_workers))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    try:
        device = resolve_device(device_name)
    except ConfigError as err:
        raise ConfigError(f"train.{err}") from None
    if device.type == "cuda":
        if world_size > 1 or device.index is None:  # under torchrun each process takes its LOCAL_RANK's GPU
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    amp = amp if device.type == "cuda" else "none"
    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        amp = "fp16"
    runtime = Runtime(rank, world_size, local_rank, device, amp)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", init_method="env://",
                                rank=rank, world_size=world_size)
        runtime.owns_process_group = True
    return runtime


def derive_seed(seed: int, *keys: object) -> int:
    """A 63-bit seed from `seed` and `keys`, stable across machines and Python versions."""
    text = json.dumps([seed, *[str(k) for k in keys]])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), Python's `random` and numpy's global generator."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def get_rng_state(device: torch.device) -> dict:
    """All RNG states as tensors and plain lists (loadable with weights_only=True)."""
    version, state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    rng = {
        "torch": torch.get_rng_state(),
        "python": [version, list(state), gauss],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached)},
    }
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return rng


def set_rng_state(rng: dict, device: torch.device) -> None:
    """Inverse of `get_rng_state`."""
    torch.set_rng_state(rng["torch"])
    version, state, gauss = rng["python"]
    random.setstate((version, tuple(state), gauss))
    numpy_state = rng["numpy"]
    np.random.set_state(("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    if device.type == "cuda" and "cuda" in rng:
        torch.cuda.set_rng_state(rng["cuda"], device)


def reduce_sums(runtime: Runtime, values: list[float]) -> list[float]:
    """Sums of `values` over the ranks (every rank must call it); the values themselves alone."""
    if not runtime.distributed:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=runtime.device)
    dist.all_reduce(tensor)
    return tensor.tolist()


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def recurrent_dtype(device: torch.device, amp: str) -> torch.dtype | None:
    """The dtype the model's recurrences run in, explicitly, under `amp` on `device`
    (`BiRNNCTC.rnn_dtype`): bfloat16 for bf16 on CUDA, where cuDNN's RNN autocast wrapper would
    otherwise run them in float16 (without a GradScaler); None (autocast decides, fp16 with a
    GradScaler) otherwise."""
    return torch.bfloat16 if device.type == "cuda" and amp == "bf16" else None


def autocast_context(device: torch.device, amp: str):
    """Autocast for `amp` ("bf16" | "fp16" | "none") on CUDA; a no-op on any other device."""
    if device.type != "cuda" or amp == "none":
        return nullcontext()
    return torch.autocast("cuda", dtype=AMP_DTYPES[amp])


class StopRequest:
    """Ctrl-C or SIGTERM during training: finish the current step, save last.pt, then stop.

    A second signal aborts at once. Handlers are installed only in the main thread and restored
    on exit.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict = {}

    def __enter__(self) -> "StopRequest":
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("stop requested: saving last.pt after this step (signal again to abort now)")

    def __exit__(self, *exc) -> None:
        import signal

        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def agreed(self, runtime: "Runtime") -> bool:
        """Whether any rank was asked to stop; then every rank counts as asked (every rank
        must call it at the same step)."""
        if runtime.distributed:
            flag = torch.tensor([float(self.requested)], device=runtime.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            self.requested = bool(flag.item())
        return self.requested


