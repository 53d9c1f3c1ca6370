#!/usr/bin/env bash
# The offline demo: synthesise a corpus with espeak-ng, flite and festival, train conf/demo.yaml on the CPU, decode
# the unseen-voice test split with greedy and beam + n-gram LM, score, write RESULTS.md, and
# transcribe one test file with word times. Needs no download. Run from anywhere:
#
#   recipes/synthetic/run.sh [--stage N] [--stop-stage M] [--dry-run]
#
# Options (defaults in brackets):
#   --stage N / --stop-stage M   run stages N..M only [0 / 100]
#   --dry-run                    print the commands without running them
#   --train-utts N               synthetic training utterances [4000]
#   --dev-utts N / --test-utts N dev and test utterances [200 / 300]
#   --seed S                     corpus seed [0]
#   --text SOURCE                what the voices read: wordnet (WordNet's example sentences, with a
#                                grammar share) or grammar (the built-in grammar only) [wordnet]
#   --grammar-share P            with --text wordnet: share of utterances from the grammar [0.25]
#   --config FILE                training config [conf/demo.yaml]
#   --exp-name NAME              experiment folder under exp/ [demo]
#   --lm-order N                 order of the n-gram LM built from the training text [4]
#   --avg K                      checkpoints averaged for decoding [3]
#   --nj N                       processes for corpus generation and preparation [2]
#   --work-dir DIR               where data/, exp/ and RESULTS.md go [this recipe's folder]
#   --train-args "k=v ..."       extra config overrides for training []
#
# Stages: 0 synthesise (and the LM text), 1 prepare manifests, 2 tokens and CMVN, 3 LM, 4 train, 5 average (and
#         calibrate the average on dev, so that asr transcribe flags audio unlike the training data),
#         6 decode greedy and beam + LM (dev tunes the LM weights, test reuses them), 7 RESULTS.md, 8 transcribe a file.
# Before any stage runs (--dry-run too), the config, --avg against train.keep_last, and the corpus,
# manifests and LM that the stages in range need (and no earlier stage in range makes) are
# checked; a problem is one line and exit 1.
set -euo pipefail

stage=0; stop_stage=100; dry_run=false
train_utts=4000; dev_utts=200; test_utts=300; seed=0; text=wordnet; grammar_share=0.25
config=conf/demo.yaml; exp_name=demo; lm_order=4; avg=3; nj=2; train_args=""; work_dir=""

recipe_dir=$(cd "$(dirname "$0")" && pwd)
. "$recipe_dir/../common.sh" "$@"
root=$(cd "$recipe_dir/../.." && pwd)
# --config FILE: relative to the current folder, else to the repository root (the default).
[ -f "$config" ] || config="$root/$config"
config=$(realpath "$config")
work_dir=${work_dir:-$recipe_dir}
if [ "$dry_run" = true ] && [ ! -d "$work_dir" ]; then
  # --dry-run writes nothing, not even the work dir; from / no stage looks done.
  log "dry run: $work_dir does not exist yet"; cd /
else
  mkdir -p "$work_dir" && cd "$work_dir"
fi

corpus=data/corpus
manifests=data/manifests
exp=exp/$exp_name
lm=data/lm/${lm_order}gram.arpa
tuned=$exp/decode/dev/beam-${lm_order}gram/tuned.json  # written by the dev decode with --tune

# --- checks before anything runs -------------------------------------------------------------
case "$text" in
  wordnet) text_args=(--text /usr/share/wordnet --text-format wordnet --grammar-share "$grammar_share") ;;
  grammar) text_args=() ;;
  *) die "--text must be wordnet or grammar, got '$text'" ;;
esac
if in_range 2 || in_range 4 || in_range 5; then
  # shellcheck disable=SC2086
  check_config --config "$config" --train $manifests/train.jsonl --valid $manifests/dev.jsonl --exp $exp $train_args
  check_average "$avg"
fi
for split in train dev test; do need 1 0 "$corpus/$split"; done
need 2 1 $manifests/train.jsonl
need 3 0 $corpus/lm-text.txt
need 4 1 $manifests/train.jsonl $manifests/dev.jsonl
need 5 1 $manifests/dev.jsonl
need 6 1 $manifests/dev.jsonl $manifests/test.jsonl
need 6 3 $lm
need 8 3 $lm

if stage 0 "synthesise the corpus (espeak-ng, flite, festival; test voices unheard in train)"; then
  run asr synth --out $corpus --train-utts "$train_utts" --dev-utts "$dev_utts" \
    --test-utts "$test_utts" --seed "$seed" --num-workers "$nj" "${text_args[@]}"
fi

if stage 1 "prepare manifests"; then
  for split in train dev test; do
    done_or_run $manifests/.$split.done \
      asr prepare dir $corpus/$split --out $manifests/$split.jsonl --num-workers "$nj"
  done
fi

if stage 2 "tokens and CMVN statistics from the training manifest"; then
  done_or_run $exp/.stats.done \
    asr stats --config "$config" --train $manifests/train.jsonl --exp $exp
fi

if stage 3 "${lm_order}-gram LM from the corpus's LM text (train's sentences and the text source's others, never dev's or test's)"; then
  done_or_run data/lm/.${lm_order}gram.done \
    asr lm build --text $corpus/lm-text.txt --order "$lm_order" --out $lm
fi

if stage 4 "train $(basename "$config")"; then
  # Rerunning resumes from $exp/checkpoints/last.pt.
  # shellcheck disable=SC2086
  done_or_run $exp/.train.done \
    asr train --config "$config" --train $manifests/train.jsonl --valid $manifests/dev.jsonl \
      --exp $exp $train_args
fi

if stage 5 "average the last $avg checkpoints; calibrate the average on dev"; then
  run asr average --exp $exp --last "$avg"
  run asr calibrate --model $exp/checkpoints/avg-$avg.pt --manifest $manifests/dev.jsonl
fi

if stage 6 "decode dev and test: greedy, and beam + LM (LM weight and word score tuned on dev); test with VTLN too"; then
  for set in dev test; do
    run asr decode --exp $exp --manifest $manifests/$set.jsonl --set $set --decoder greedy
  done
  run asr decode --exp $exp --manifest $manifests/dev.jsonl --set dev --decoder beam --lm $lm \
    --tune --tune-lm-weights 0.5,0.75,1.0,1.5 --tune-word-scores 0,1,2
  run asr decode --exp $exp --manifest $manifests/test.jsonl --set test --decoder beam --lm $lm \
    --tuned-from $tuned
  # test-time VTLN: each test speaker's filterbank warped by the factor the model is surest under
  run asr decode --exp $exp --manifest $manifests/test.jsonl --set test --decoder greedy --vtln
  run asr decode --exp $exp --manifest $manifests/test.jsonl --set test --decoder beam --lm $lm \
    --tuned-from $tuned --vtln
fi

if stage 7 "collect results into RESULTS.md"; then
  run asr results --exp $exp --out RESULTS.md
fi

if stage 8 "transcribe one test file with word times (beam + LM, weights tuned on dev)"; then
  # sed, not head: head would close the pipe early and, under pipefail, fail the recipe.
  wav=$(find $corpus/test -name '*.flac' 2>/dev/null | sort | sed -n 1p) || true
  if [ -z "$wav" ]; then
    [ "$dry_run" = true ] || die "no .flac file under $corpus/test (run stage 0)"
    wav="$corpus/test/FIRST.flac"
  fi
  run asr transcribe --model $exp --output-format json --decoder beam --lm $lm --tuned-from $tuned "$wav"
fi

log "done"
