#!/usr/bin/env bash
# LibriSpeech (or any corpus in its layout): download, prepare, train a BiRNN-CTC model, decode the
# dev and test sets with greedy search, beam search and beam search + word n-gram LM, and collect
# the results in RESULTS.md. Run from anywhere:
#
#   recipes/librispeech/run.sh [--set mini|100|460|960] [--stage N] [--stop-stage M] [--dry-run]
#   recipes/librispeech/run.sh --corpus-dir PATH --train-sets a,b --dev-sets c --test-sets d
#
# Options (defaults in brackets):
#   --set S                      training data [mini]: mini = train-clean-5 (dev-clean-2 is dev and
#                                test); 100 = train-clean-100; 460 = + train-clean-360;
#                                960 = + train-other-500. For 100/460/960 the dev sets are
#                                dev-clean,dev-other and the test sets test-clean,test-other.
#   --stage N / --stop-stage M   run stages N..M only [0 / 100]
#   --dry-run                    print the commands without running them (writes nothing)
#   --corpus-dir PATH            use a corpus already on disk: PATH holds one folder per split in
#                                LibriSpeech layout (<split>/<speaker>/<chapter>/...); stage 0 is
#                                skipped [download into data/]
#   --train-sets / --dev-sets / --test-sets a,b   split names, replacing those of --set; the first
#                                dev set validates training and tunes the LM weights []
#   --mirror URL                 base URL replacing https://www.openslr.org/resources []
#   --md5 "NAME=MD5,..."         expected MD5 of files on a mirror that repacks them []
#   --lm-source official|train   official: openslr 11's ARPA LM (--lm-file) and lexicon;
#                                train: an n-gram LM built from the training text [official]
#   --lm-file NAME               official LM whose weights are tuned on the first dev set (small:
#                                tuning decodes the dev set once per grid point) [3-gram.pruned.1e-7.arpa.gz]
#   --final-lm-file NAME         official LM of the final decode of every set, with the tuned
#                                weights, as the published LibriSpeech recipes report [4-gram.arpa.gz];
#                                the same name as --lm-file: one LM for both
#   --lm-order N                 order of the LM built with --lm-source train [3]
#   --config FILE                training config [mini, 100: conf/small.yaml; 460, 960: conf/large.yaml]
#   --train-args "k=v ..."       extra config overrides for training [mini: train.epochs=30]
#   --exp-name NAME              experiment folder under exp/ [<set>-<config name>]
#   --avg K                      checkpoints averaged for decoding [5]
#   --nj N                       processes for data preparation [8]
#   --decode-args "..."          extra `asr decode` options, e.g. "--device cuda:1" or "--vtln" []
#   --work-dir DIR               where data/, exp/ and RESULTS.md go [this recipe's folder]
#   --ngpu N                     training processes (GPUs) per node; N > 1 trains under torchrun
#                                (DDP; add train.device=cpu to --train-args for gloo on CPUs) [1]
#   --nnodes M                   nodes training together; M > 1 needs --master-addr (and
#                                --node-rank on each node) or --rdzv-endpoint, data/ and exp/ on a
#                                filesystem every node sees, and --stage 4 --stop-stage 4 [1]
#   --node-rank R / --master-addr HOST / --master-port PORT   torchrun's static rendezvous [0 / - / 29500]
#   --rdzv-endpoint HOST:PORT    torchrun's c10d rendezvous instead (the same command on every node) []
#
# Stages: 0 download, 1 manifests (one per split, one combined training manifest), 2 tokens and
#         CMVN, 3 LM, 4 train, 5 average (and calibrate the average on the first dev set, so that
#         asr transcribe flags audio unlike the training data), 6 decode (the first dev set tunes the
#         LM weights, the other sets reuse them), 7 RESULTS.md.
# Before any stage runs (--dry-run too), the config, --avg against train.keep_last, and the
# manifests, corpus folders and LMs that the stages in range need (and no earlier stage in range
# makes) are checked; a problem is one line and exit 1.
set -euo pipefail

stage=0; stop_stage=100; dry_run=false
set=mini; corpus_dir=""; train_sets=""; dev_sets=""; test_sets=""; mirror=""; md5=""
lm_source=official; lm_file=3-gram.pruned.1e-7.arpa.gz; final_lm_file=4-gram.arpa.gz; lm_order=3
config=""; train_args=""; exp_name=""; avg=5; nj=8; decode_args=""; work_dir=""
ngpu=1; nnodes=1; node_rank=0; master_addr=""; master_port=29500; rdzv_endpoint=""

recipe_dir=$(cd "$(dirname "$0")" && pwd)
. "$recipe_dir/../common.sh" "$@"
root=$(cd "$recipe_dir/../.." && pwd)

case "$set" in
  mini) sets=(train-clean-5 dev-clean-2 "") ; size_config=conf/small.yaml; size_args="train.epochs=30" ;;
  100)  sets=(train-clean-100 dev-clean,dev-other test-clean,test-other); size_config=conf/small.yaml ;;
  460)  sets=(train-clean-100,train-clean-360 dev-clean,dev-other test-clean,test-other)
        size_config=conf/large.yaml ;;
  960)  sets=(train-clean-100,train-clean-360,train-other-500 dev-clean,dev-other test-clean,test-other)
        size_config=conf/large.yaml ;;
  *) die "unknown --set $set (mini, 100, 460 or 960)" ;;
esac
case "$lm_source" in official|train) ;; *) die "unknown --lm-source $lm_source (official or train)" ;; esac
train_sets=${train_sets:-${sets[0]}}; dev_sets=${dev_sets:-${sets[1]}}; test_sets=${test_sets:-${sets[2]}}
[ -n "$train_sets" ] && [ -n "$dev_sets" ] || die "--train-sets and --dev-sets must not be empty"
if [ -z "$config" ]; then config=$size_config; train_args=${train_args:-${size_args:-}}; fi
config=$(cd "$root" && realpath -m "$config")
exp_name=${exp_name:-$set-$(basename "$config" .yaml)}
work_dir=${work_dir:-$recipe_dir}
if [ "$dry_run" != true ]; then mkdir -p "$work_dir"; fi
# A dry run of a work dir that does not exist yet runs from /, where no stage looks done.
if [ -d "$work_dir" ]; then cd "$work_dir"; else cd /; fi
torchrun_launcher "$ngpu" "$nnodes" "$node_rank" "$master_addr" "$master_port" "$rdzv_endpoint" "$exp_name"
if [ "$nnodes" -gt 1 ] && { [ "$stage" -ne 4 ] || [ "$stop_stage" -ne 4 ]; }; then
  die "--nnodes $nnodes: run --stage 4 --stop-stage 4 on every node, the other stages on one node"
fi

# Each split once, in order: the training splits, then the dev and test splits not already listed.
IFS=, read -r -a train_list <<< "$train_sets"
IFS=, read -r -a listed <<< "$dev_sets${test_sets:+,$test_sets}"
eval_list=()
for split in "${listed[@]}"; do [[ " ${eval_list[*]} " == *" $split "* ]] || eval_list+=("$split"); done
splits=()
for split in "${train_list[@]}" "${eval_list[@]}"; do [[ " ${splits[*]} " == *" $split "* ]] || splits+=("$split"); done
all_splits=$(IFS=,; echo "${splits[*]}")
first_dev=${eval_list[0]}

corpus=${corpus_dir:-data/LibriSpeech}
manifests=data/manifests
train_name=${train_sets//,/+}  # the combined training manifest is named after its parts
train_parts=()
for split in "${train_list[@]}"; do train_parts+=("$manifests/$split.jsonl"); done
exp=exp/$exp_name
if [ "$lm_source" = official ]; then
  lm=data/lm/$lm_file; lexicon=data/lm/librispeech-lexicon.txt
  lm_opts=(--lm "$lm" --lexicon "$lexicon")
  final_lm_opts=(--lm "data/lm/$final_lm_file" --lexicon "$lexicon")
else
  lm=$exp/lm/train-${lm_order}gram.arpa
  lm_opts=(--lm "$lm"); final_lm_file=""; final_lm_opts=()
fi
[ "$final_lm_file" != "$lm_file" ] || final_lm_file=""  # one LM for tuning and the final decode
lm_label=$(basename "$lm" .gz); lm_label=beam-${lm_label%.arpa}
valid_manifest=$manifests/$first_dev.jsonl

# --- checks before anything runs -------------------------------------------------------------
if in_range 2 || in_range 4 || in_range 5; then
  # shellcheck disable=SC2086
  check_config --config "$config" --train "$manifests/$train_name.combined.jsonl" --valid "$valid_manifest" \
    --exp "$exp" $train_args
  check_average "$avg"
fi
for split in "${splits[@]}"; do
  if [ -n "$corpus_dir" ]; then need 1 - "$corpus/$split"; else need 1 0 "$corpus/$split"; fi
done
need 2 1 "$manifests/$train_name.combined.jsonl"
[ "$lm_source" = official ] || need 3 1 "$manifests/$train_name.combined.jsonl"
need 4 1 "$manifests/$train_name.combined.jsonl" "$valid_manifest"
need 5 1 "$valid_manifest"
for split in "${eval_list[@]}"; do need 6 1 "$manifests/$split.jsonl"; done
if [ "$lm_source" = official ]; then need 6 3 "$lm" "$lexicon" ${final_lm_file:+"data/lm/$final_lm_file"}
else need 6 3 "$lm"; fi
# asr decode names its folder after the LM and, when one is given, the lexicon (asr.evaluate.decoder_label)
[ "$lm_source" = official ] && lm_label=$lm_label-lex-$(basename "$lexicon" .txt)
# and --vtln (test-time VTLN, in --decode-args) adds -vtln: the tuned weights are found there
case " $decode_args " in *" --vtln "*) lm_label=$lm_label-vtln ;; esac

if stage 0 "download ${all_splits}"; then
  if [ -n "$corpus_dir" ]; then
    log "  using the corpus in $corpus_dir"
  else
    run asr download librispeech --data-dir data --subsets "$all_splits" \
      ${mirror:+--mirror "$mirror"} ${md5:+--md5 "$md5"}
  fi
fi

if stage 1 "manifests: ${all_splits}; training manifest $train_name"; then
  for split in "${splits[@]}"; do
    done_or_run $manifests/.$split.done \
      asr prepare dir "$corpus/$split" --out $manifests/$split.jsonl --num-workers "$nj"
  done
  done_or_run $manifests/.$train_name.combined.done \
    asr prepare combine --out $manifests/$train_name.combined.jsonl "${train_parts[@]}"
fi
train_manifest=$manifests/$train_name.combined.jsonl

if stage 2 "tokens and CMVN statistics from the training manifest"; then
  done_or_run $exp/.stats.done \
    asr stats --config "$config" --train $train_manifest --exp $exp
fi

if stage 3 "word LM ($lm_source): $lm"; then
  if [ "$lm_source" = official ]; then
    run asr download librispeech-lm --data-dir data \
      --files "$lm_file${final_lm_file:+,$final_lm_file},$(basename "$lexicon")" \
      ${mirror:+--mirror "$mirror"} ${md5:+--md5 "$md5"}
  else
    done_or_run $exp/.lm.done \
      asr lm build --text $train_manifest --order "$lm_order" --out "$lm"
  fi
fi

if stage 4 "train $(basename "$config") on $train_sets ($((ngpu * nnodes)) process(es))"; then
  # Rerunning resumes from $exp/checkpoints/last.pt.
  # shellcheck disable=SC2086
  done_or_run $exp/.train.done \
    "${train_launcher[@]}" --config "$config" --train $train_manifest --valid $valid_manifest \
      --exp $exp $train_args
fi

if stage 5 "average the last $avg checkpoints; calibrate the average on $first_dev"; then
  run asr average --exp $exp --last "$avg"
  run asr calibrate --model $exp/checkpoints/avg-$avg.pt --manifest "$valid_manifest"
fi

if stage 6 "decode ${eval_list[*]}: greedy, beam, beam + LM (weights tuned on $first_dev)"; then
  # shellcheck disable=SC2086
  for set_name in "${eval_list[@]}"; do
    for decoder in greedy beam; do
      run asr decode --exp $exp --manifest $manifests/$set_name.jsonl --set "$set_name" \
        --decoder $decoder $decode_args
    done
    if [ "$set_name" = "$first_dev" ]; then
      run asr decode --exp $exp --manifest $manifests/$set_name.jsonl --set "$set_name" \
        --decoder beam "${lm_opts[@]}" --tune $decode_args
    else
      run asr decode --exp $exp --manifest $manifests/$set_name.jsonl --set "$set_name" \
        --decoder beam "${lm_opts[@]}" --tuned-from $exp/decode/$first_dev/$lm_label/tuned.json $decode_args
    fi
    if [ -n "$final_lm_file" ]; then  # the big LM, with the weights tuned with the small one
      run asr decode --exp $exp --manifest $manifests/$set_name.jsonl --set "$set_name" \
        --decoder beam "${final_lm_opts[@]}" --tuned-from $exp/decode/$first_dev/$lm_label/tuned.json $decode_args
    fi
  done
fi

if stage 7 "collect results into RESULTS.md"; then
  run asr results --exp $exp --out RESULTS.md --title "LibriSpeech $set ($exp_name)"
fi

log "done"
