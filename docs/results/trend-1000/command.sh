# The trend over training-set sizes: SST-2 and STS-B at 1000 examples, 10 epochs, vanilla and blo-mixup
# (docs/results/README.md, "The trend over training-set sizes"; docs/results/trend.py reads this results.csv).
# Runs: from a separate worktree at commit 139258b, one seed at a time, two processes with one thread each,
# 2-core CPU machine, 2026-12-05:
#   git worktree add ../wt-table 139258b
#   cd ../wt-table && export OMP_NUM_THREADS=1 PYTHONPATH=$PWD
#   C="python -m blo_mixup.cli compare --seeds 1-5 --data-dir ../shared/data/glue --no-save-model --report-to none"
#   for s in 1 2 3 4 5; do $C --tasks sst2,stsb --methods vanilla,blo-mixup --epochs 10 --train-size 1000 \
#       --output-dir ../main/docs/results/trend-1000 --seeds $s; done
# The run folders (results.json, predictions, attention) are in git history up to commit 84be7d6:
#   git checkout 84be7d6 -- docs/results/trend-1000/runs
# summary.md, summary.png and results.csv from results.csv (trains nothing, reads no data), from the repository root:
blo-mixup compare --tasks sst2,stsb --methods vanilla,blo-mixup --seeds 1-5 --epochs 10 --train-size 1000 --data-dir ../shared/data/glue --no-save-model --report-to none --output-dir docs/results/trend-1000 --report-only
