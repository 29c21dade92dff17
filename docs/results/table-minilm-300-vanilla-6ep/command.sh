# The control of the low-resource table: plain fine-tuning on STS-B for 6 epochs, MiniLM, 300 examples
# (docs/results/README.md, "A control: plain fine-tuning with as many weight updates as blo-mixup").
# Runs: from the main checkout as it was then (committed in 32b609b), one thread, 2-core CPU machine, 2026-12-03:
#   blo-mixup compare --tasks stsb --methods vanilla --epochs 6 --seeds 1-5 --model minilm --train-size 300 \
#       --data-dir ../shared/data/glue --no-save-model --output-dir docs/results/table-minilm-300-vanilla-6ep
# The run folders (results.json) are in git history up to commit 84be7d6:
#   git checkout 84be7d6 -- docs/results/table-minilm-300-vanilla-6ep/runs
# summary.md, summary.png and results.csv from results.csv (trains nothing, reads no data), from the repository root:
blo-mixup compare --tasks stsb --methods vanilla --epochs 6 --seeds 1-5 --model minilm --train-size 300 --data-dir ../shared/data/glue --no-save-model --output-dir docs/results/table-minilm-300-vanilla-6ep --report-only
