# The low-resource table: MiniLM, 300 examples, 3 epochs, 4 tasks x 9 methods x 5 seeds (docs/results/README.md).
# Its blo-mixup runs used the hypergradient then called "darts", today's "darts-plain" (commit 4416c72 renamed it):
# rerunning the commands below in a fresh folder runs today's default instead.
# Runs: from the main checkout as it was then (commits 5f6df69 to ac06293), two compare processes with one thread
# each, 2-core CPU machine, 2026-12-03:
#   M=vanilla,blo-mixup,blo-mixup-fast,dps-dense,guided-dropout,pac-tuning,ftft,mixout,child-tuning-d
#   C="blo-mixup compare --methods $M --seeds 1-5 --model minilm --train-size 300 --data-dir ../shared/data/glue --no-save-model"
#   export OMP_NUM_THREADS=1
#   $C --tasks stsb --output-dir docs/results/table-minilm-300 && $C --tasks rte --output-dir docs/results/table-minilm-300 &
#   $C --tasks mrpc --output-dir docs/results/table-minilm-300 && $C --tasks cola --output-dir docs/results/table-minilm-300 &
#   wait
# The run folders (results.json, predictions, attention) are in git history up to commit 84be7d6:
#   git checkout 84be7d6 -- docs/results/table-minilm-300/runs
# summary.md, summary.png and results.csv from results.csv (trains nothing, reads no data), from the repository root:
blo-mixup compare --tasks rte,mrpc,cola,stsb --methods vanilla,blo-mixup,blo-mixup-fast,dps-dense,guided-dropout,pac-tuning,ftft,mixout,child-tuning-d --seeds 1-5 --model minilm --train-size 300 --epochs 3 --data-dir ../shared/data/glue --no-save-model --output-dir docs/results/table-minilm-300 --report-only
