#!/bin/bash
# BoLT E-step on a Slurm cluster: one array task per shard, each on one GPU, then one merge job.
#
#   bash params/paper/slurm/estep_array.sh OUT_DIR CHUNKS_JSONL MODEL_DIR [NUM_SHARDS]
#   bash params/paper/slurm/estep_array.sh OUT_DIR      # OUT_DIR already prepared (estep.json), e.g. by
#                                                       # notebook 03 with estep_shards > 0
#
# OUT_DIR       where estep.json, shards/, cache/, records.jsonl and summary.json go
# CHUNKS_JSONL  the canonical chunk list (doc_id, index, prefix, suffix), the same for every shard
# MODEL_DIR     HF checkpoint of the thought generator (the previous iteration's trial-0 model)
# NUM_SHARDS    independent jobs (default 200, as the paper's E-step)
#
# Shards are independent and restartable: a failed or preempted task is resubmitted with
# `sbatch --array=<i> ...` (finished groups come from its SQLite cache, finished shards are skipped),
# and the merge refuses to run while any shard is missing.  Set DRY_RUN=1 to print the sbatch
# commands instead of submitting.  Adjust the #SBATCH-style options below to the cluster.
set -euo pipefail

OUT=${1:?usage: estep_array.sh OUT_DIR [CHUNKS_JSONL MODEL_DIR [NUM_SHARDS]]}
PY=${PY:-.venv-vllm/bin/python}        # the vLLM environment (make test-vllm builds it; use a CUDA vLLM on GPUs)
BACKEND=${BACKEND:-vllm}               # or: transformers
ESTEP_CONFIG=${ESTEP_CONFIG:-'{"k": 4, "max_thought_tokens": 1024, "temperature": 1.0, "seed": 0, "max_prefix_tokens": 1024, "batch_chunks": 256}'}
ENGINE_ARGS=${ENGINE_ARGS:-'{"dtype": "bfloat16", "max_model_len": 2048, "gpu_memory_utilization": 0.85}'}
SBATCH_COMMON=${SBATCH_COMMON:-"--cpus-per-task=8 --mem=32G --time=24:00:00"}
run() { if [ "${DRY_RUN:-0}" = 1 ]; then echo "$*"; else "$@"; fi; }

mkdir -p "$OUT/logs"
# 1. freeze the job description once (chunks + settings), before any shard starts; a prepared OUT_DIR keeps its own
if [ -f "$OUT/estep.json" ]; then
  N=$(python3 -c "import json, sys; print(json.load(open(sys.argv[1]))['num_shards'])" "$OUT/estep.json")
else
  CHUNKS=${2:?chunks jsonl (OUT_DIR has no estep.json yet)}
  MODEL=${3:?model dir}
  N=${4:-200}
  run "$PY" -m lt_utils.paper.estep_jobs prepare --chunks "$CHUNKS" --out "$OUT" --model "$MODEL" \
      --num-shards "$N" --config "$ESTEP_CONFIG"
fi

# 2. the shards: array task i runs shard i (at most 50 at a time)
SHARD_CMD="$PY -m lt_utils.paper.estep_jobs shard --out '$OUT' --shard-index \$SLURM_ARRAY_TASK_ID --backend $BACKEND --engine-args '$ENGINE_ARGS'"
if [ "${DRY_RUN:-0}" = 1 ]; then
  echo sbatch --parsable --job-name=estep --array="0-$((N - 1))%50" --gres=gpu:1 $SBATCH_COMMON \
       --output="$OUT/logs/shard_%a.out" --wrap="$SHARD_CMD"
  JOB=DRYRUN
else
  JOB=$(sbatch --parsable --job-name=estep --array="0-$((N - 1))%50" --gres=gpu:1 $SBATCH_COMMON \
        --output="$OUT/logs/shard_%a.out" --wrap="$SHARD_CMD")
fi

# 3. the merge, once every array task has ended successfully
run sbatch --parsable --job-name=estep-merge --dependency="afterok:$JOB" --cpus-per-task=2 --mem=16G \
    --time=2:00:00 --output="$OUT/logs/merge.out" \
    --wrap="$PY -m lt_utils.paper.estep_jobs merge --out '$OUT'"
echo "submitted: shards $JOB (array 0-$((N - 1))), then merge into $OUT/records.jsonl"
