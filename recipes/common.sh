# Shared by every recipe's run.sh: option parsing, logging and stage guards. No recipe logic here;
# each stage of a recipe is one `asr ...` call.
#
# A recipe declares its options as shell variables with defaults, then sources this file:
#   stage=0; stop_stage=100; dry_run=false
#   . "$(dirname "$0")/../common.sh" "$@"
# Every `--some-option VALUE` sets $some_option (which must already be declared), and
# `--flag` alone sets a declared boolean to true.

recipe_name=$(basename "$(cd "$(dirname "$0")" && pwd)")
log() { echo "$(date '+%Y-%m-%d %H:%M:%S') [$recipe_name] $*"; }

die() { echo "error: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --help|-h)
      sed -n '2,/^$/s/^# \{0,1\}//p' "$0"; exit 0 ;;
    --*)
      name=$(echo "${1#--}" | tr '-' '_')
      [ -n "${!name+x}" ] || die "unknown option $1 (see $0 --help)"
      if [ "${!name}" = false ] || [ "${!name}" = true ]; then
        if [ $# -ge 2 ] && { [ "$2" = true ] || [ "$2" = false ]; }; then
          printf -v "$name" '%s' "$2"; shift 2
        else
          printf -v "$name" '%s' true; shift
        fi
      else
        [ $# -ge 2 ] || die "option $1 needs a value"
        printf -v "$name" '%s' "$2"; shift 2
      fi ;;
    *) die "unexpected argument $1 (see $0 --help)" ;;
  esac
done

# in_range N: true when stage N is inside --stage/--stop-stage.
in_range() { [ "$1" -ge "$stage" ] && [ "$1" -le "$stop_stage" ]; }

# stage N "description": true (and a log line) when stage N is inside --stage/--stop-stage.
stage() {
  local n=$1; shift
  if in_range "$n"; then
    log "stage $n: $*"
    return 0
  fi
  return 1
}

# --- checks before anything runs (also in --dry-run): one line and exit 1 on the first problem ---
# need USER MAKER PATH...: when stage USER is in range, each PATH must exist unless stage MAKER,
# which makes it, runs before it (MAKER in range and < USER; MAKER "-" when no stage makes it).
need() {
  local user=$1 maker=$2; shift 2
  in_range "$user" || return 0
  if [ "$maker" != - ] && in_range "$maker" && [ "$maker" -lt "$user" ]; then return 0; fi
  local path
  for path in "$@"; do
    [ -e "$path" ] && continue
    if [ "$maker" = - ]; then die "stage $user needs $path, which does not exist"; fi
    die "stage $user needs $path, made by stage $maker: run stage $maker first (--stage $maker)"
  done
}

# check_config ARGS...: `asr train ARGS --print-config` resolves the config (the file, its sections
# and keys, the overrides; asr prints its one-line error) into $resolved_config.
check_config() {
  resolved_config=$(asr train "$@" --print-config) || exit 1
}

# config_value SECTION.KEY: that value of $resolved_config.
config_value() {
  printf '%s\n' "$resolved_config" | awk -v section="${1%%.*}:" -v key="${1#*.}:" \
    '/^[^ #]/ { current = $1 } current == section && $1 == key { print $2; exit }'
}

# check_average K: `asr average --last K` (stage 5) needs the last K step checkpoints, which
# training keeps only if train.keep_last is 0 (all) or >= K.
check_average() {
  in_range 5 || return 0
  local keep; keep=$(config_value train.keep_last)
  [ -n "$keep" ] || die "no train.keep_last in the resolved config of $config"
  if [ "$keep" -ne 0 ] && [ "$keep" -lt "$1" ]; then
    die "--avg $1 needs $1 step checkpoints but $(basename "$config") keeps train.keep_last=$keep: pass --avg $keep or train.keep_last=$1 in --train-args"
  fi
}

# torchrun_launcher NGPU NNODES NODE_RANK MASTER_ADDR MASTER_PORT RDZV_ENDPOINT RDZV_ID: sets
# $train_launcher to `asr train` on one process, else to PyTorch's torchrun running `-m asr.cli
# train` on NGPU processes per node (--standalone on one node; on several, a static master
# address and node rank, or a c10d rendezvous endpoint shared by every node).
torchrun_launcher() {
  local ngpu=$1 nnodes=$2 node_rank=$3 master_addr=$4 master_port=$5 rdzv_endpoint=$6 rdzv_id=$7
  [[ "$ngpu" =~ ^[1-9][0-9]*$ ]] || die "--ngpu must be a positive integer, got '$ngpu'"
  [[ "$nnodes" =~ ^[1-9][0-9]*$ ]] || die "--nnodes must be a positive integer, got '$nnodes'"
  if [ "$nnodes" -eq 1 ] && [ "$ngpu" -eq 1 ]; then train_launcher=(asr train); return 0; fi
  if [ "$nnodes" -eq 1 ]; then
    train_launcher=(torchrun --standalone --nproc_per_node "$ngpu" -m asr.cli train); return 0
  fi
  if [ -n "$rdzv_endpoint" ]; then
    train_launcher=(torchrun --nnodes "$nnodes" --nproc_per_node "$ngpu" --rdzv_backend c10d
                    --rdzv_endpoint "$rdzv_endpoint" --rdzv_id "$rdzv_id" -m asr.cli train)
    return 0
  fi
  [ -n "$master_addr" ] || die "--nnodes $nnodes needs --master-addr HOST (with --node-rank) or --rdzv-endpoint HOST:PORT"
  [[ "$node_rank" =~ ^[0-9]+$ ]] && [ "$node_rank" -lt "$nnodes" ] \
    || die "--node-rank must be 0..$((nnodes - 1)), got '$node_rank'"
  train_launcher=(torchrun --nnodes "$nnodes" --node_rank "$node_rank" --nproc_per_node "$ngpu"
                  --master_addr "$master_addr" --master_port "$master_port" -m asr.cli train)
}

# run CMD ...: print the command; execute it unless --dry-run.
run() {
  echo "+ $*"
  if [ "$dry_run" != true ]; then "$@"; fi
}

# done_or_run MARKER CMD ...: run CMD unless MARKER exists, then create MARKER.
done_or_run() {
  local marker=$1; shift
  if [ -f "$marker" ]; then
    log "  already done ($marker)"; return 0
  fi
  run "$@"
  if [ "$dry_run" != true ]; then mkdir -p "$(dirname "$marker")"; touch "$marker"; fi
}
