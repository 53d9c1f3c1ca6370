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

# stage N "description": true when stage N is inside --stage/--stop-stage.
stage() {
  local n=$1; shift
  if [ "$n" -ge "$stage" ] && [ "$n" -le "$stop_stage" ]; then
    log "stage $n: $*"
    return 0
  fi
  return 1
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
