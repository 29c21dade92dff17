# RTE at 1000 examples, 6 epochs, plain fine-tuning on the dev set (docs/results/README.md): it does not learn
# there, so RTE is out of the table.
# Runs: from a separate worktree at commit 139258b, one thread, 2-core CPU machine, 2026-12-04:
#   git worktree add ../wt-table 139258b
#   cd ../wt-table && export OMP_NUM_THREADS=1 PYTHONPATH=$PWD
#   C="python -m blo_mixup.cli compare --seeds 1-5 --data-dir ../shared/data/glue --no-save-model --report-to none"
#   $C --tasks rte --methods vanilla --epochs 6 --train-size 1000 --output-dir ../main/docs/results/rte-1000
# The run folders (results.json, predictions) are in git history up to commit 84be7d6:
#   git checkout 84be7d6 -- docs/results/rte-1000/runs
# summary.md, summary.png and results.csv from results.csv (trains nothing, reads no data), from the repository root:
blo-mixup compare --tasks rte --methods vanilla --seeds 1-5 --epochs 6 --train-size 1000 --data-dir ../shared/data/glue --no-save-model --report-to none --output-dir docs/results/rte-1000 --report-only
