#!/usr/bin/env bash
# The prepared GPU check (scripts/gpu_check.py): on one GPU, without a network, in under 8 minutes,
# a table of the CUDA tests, the AMP dtype of each layer, bench_train of conf/small.yaml and
# conf/large.yaml in each amp mode (audio-s/s, peak GPU memory), a 300-step bf16 training on a
# tone corpus (finite loss), a greedy decode on the GPU and a 2-process DDP run. One command, from
# anywhere, nothing to edit:
#
#   scripts/gpu_check.sh             # run it; the table is printed and kept in /tmp/asr-gpu-check/report.txt
#   scripts/gpu_check.sh --dry-run   # list the commands it would run
#   scripts/gpu_check.sh --help      # options (work folder, which checks, sizes)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
python=$root/.venv/bin/python
[ -x "$python" ] || python=$(command -v python3)
exec "$python" "$root/scripts/gpu_check.py" "$@"
