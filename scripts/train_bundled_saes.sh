#!/usr/bin/env bash
# Every number of docs/training.md "Bundled SAEs from Wikipedia", end to end. Each step resumes
# when rerun (training from its checkpoint, the benchmarks from their cached per-SAE results), so a killed
# run loses at most a few minutes. On 2 CPU cores the whole script took about 2 hours; with a GPU, add
# nothing: `gradsae train` uses CUDA when present (--device auto).
#
#   bash scripts/train_bundled_saes.sh [RUNS_FOLDER]      (default ~/.cache/gradsae/bundled-saes)
set -euo pipefail
cd "$(dirname "$0")/.."
R=${1:-$HOME/.cache/gradsae/bundled-saes}
W=../shared/data/wikipedia
DATA=$W/wiki-00.jsonl.gz,$W/wiki-01.jsonl.gz,$W/wiki-02.jsonl.gz,$W/wiki-03.jsonl.gz   # wiki-04 held out
BIN=${BIN:-.venv/bin}
mkdir -p "$R"

# 1. TopK at three layers spread over depth (the GradSAE paper's 9/20/31 of 42 -> 6/14/22 of 30), one
#    model pass for the three; rows of 1024 tokens so every position of the 400-1000-token QA prompts is in
#    the training distribution; snapshots for the survival curve over training tokens.
$BIN/gradsae train --data $DATA --layers 6,14,22 --architectures topk --k 128 --d-sae 4096 \
    --context-length 1024 --batch-size 2 --max-tokens 1000000 --snapshot-tokens 250000,500000 \
    --checkpoint-every 16 --out "$R/A-L6-14-22"

# 2. TopK / g-SAE / E2E at layer 14 on the same tokens (the g-SAE comparison, L0 = 32, one seed).
$BIN/gradsae train --data $DATA --layers 14 --architectures topk,gsae,e2e --k 32 --d-sae 4096 \
    --max-tokens 300000 --checkpoint-every 16 --out "$R/B-L14-cmp"

# 3. Held-out activations (wiki-04, 2 cache shards = 16k tokens) for the cards and the comparison.
$BIN/gradsae cache --data $W/wiki-04.jsonl.gz --layers 6,14,22 --max-shards 2 --out "$R/heldout-wiki04"

# 4. Splice survival (--error none) on the first 150 answerable SQuAD dev questions: the curve.
A="$R/A-L6-14-22"
SAES=""
for snap in 250000 500000; do for l in 6 14 22; do SAES+="$A/snapshots/$snap/L$l/topk_k128,"; done; done
for l in 6 14 22; do SAES+="$A/L$l/topk_k128,"; done
SAES+="$R/B-L14-cmp/topk_k32,$R/B-L14-cmp/gsae_k32_b0.5,$R/B-L14-cmp/e2e_k32"
$BIN/python benchmarks/bench_splice_survival.py --sae "$SAES" --out-root "$R/survival" \
    --json benchmarks/out/splice_survival.json

# 5. The comparison table (eval on held-out wiki-04 per SAE; intervals need --seeds 0,1,2 in step 2).
$BIN/python benchmarks/bench_sae_comparison.py --run "$R/B-L14-cmp" --heldout "$R/heldout-wiki04" \
    --out-root "$R/comparison" --json benchmarks/out/sae_comparison.json

# 6. Ship them: float16 SAELens folders, eval.json on held-out text, cards.
$BIN/python scripts/bundle_saes.py --heldout "$R/heldout-wiki04" --eval-root "$R/bundle-evals" \
    --sae smollm2/topk/L6="$A/L6/topk_k128" --sae smollm2/topk/L14="$A/L14/topk_k128" \
    --sae smollm2/topk/L22="$A/L22/topk_k128" --sae smollm2/topk-k32/L14="$R/B-L14-cmp/topk_k32" \
    --sae smollm2/gsae/L14="$R/B-L14-cmp/gsae_k32_b0.5" --sae smollm2/e2e/L14="$R/B-L14-cmp/e2e_k32"
