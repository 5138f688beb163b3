#!/usr/bin/env bash
# Issue 22: TopK SAEs at the attention output and at the MLP output of SmolLM2's block 6, with the settings of
# the bundled residual SAE topk/L6 (k 128, d_sae 4096, rows of 1024 tokens, 1M tokens of wiki-00..03); their
# held-out eval (wiki-04, 2 cache shards of the same site); and grad x act against exact ablation per site
# type (residual / attention output / MLP output) on the same SQuAD questions. Each step resumes when rerun.
#
#   bash scripts/train_site_saes.sh [RUNS_FOLDER]      (default ~/.cache/gradsae/site-saes)
set -euo pipefail
cd "$(dirname "$0")/.."
R=${1:-$HOME/.cache/gradsae/site-saes}
W=../shared/data/wikipedia
DATA=$W/wiki-00.jsonl.gz,$W/wiki-01.jsonl.gz,$W/wiki-02.jsonl.gz,$W/wiki-03.jsonl.gz   # wiki-04 held out
BIN=${BIN:-.venv/bin}
N=${N:-10}
mkdir -p "$R" docs/results/site_saes

for site in hook_attn_out hook_mlp_out; do
    $BIN/gradsae train --data $DATA --layers 6 --site $site --architectures topk --k 128 --d-sae 4096 \
        --context-length 1024 --batch-size 2 --lr 5e-4 --max-tokens 1000000 --checkpoint-every 16 \
        --out "$R/$site"
    $BIN/gradsae cache --data $W/wiki-04.jsonl.gz --layers 6 --site $site --no-grad --max-shards 2 \
        --out "$R/heldout-$site"
    $BIN/gradsae eval --sae "$R/$site/topk_k128" --cache "$R/heldout-$site" --holdout-shards 2 \
        --out "$R/eval-$site"
    cp "$R/eval-$site/eval.json" "docs/results/site_saes/eval-$site.json"
done

# grad x act vs exact ablation on the same questions for the three site types; the residual one is the bundled
# topk/L6 (docs/results/influence_fidelity_reliability.json, the same command with --sae smollm2/topk/L6)
for site in hook_attn_out hook_mlp_out; do
    $BIN/python benchmarks/bench_influence_fidelity.py --sae "$R/$site/topk_k128" --n $N --exact-latents 20 \
        --ig-steps 8 --out "docs/results/site_saes/fidelity-$site.json"
done
