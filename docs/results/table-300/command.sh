# SST-2 and STS-B at 300 examples, 10 epochs (docs/results/README.md, "The table under the settled protocol").
# Runs: from a separate worktree at commit 139258b (cf14043 for the blo-mixup+unroll-steps=5 row, which needs
# METHOD+OPTION=VALUE), two processes with one thread each, 2-core CPU machine, 2026-12-04 to 2026-12-05:
#   git worktree add ../wt-table 139258b
#   cd ../wt-table && export OMP_NUM_THREADS=1 PYTHONPATH=$PWD
#   C="python -m blo_mixup.cli compare --seeds 1-5 --data-dir ../shared/data/glue --no-save-model --report-to none"
#   T300="--epochs 10 --output-dir ../main/docs/results/table-300"
#   $C --tasks sst2 --methods vanilla,vanilla-matched,blo-mixup $T300
#   $C --tasks stsb --methods vanilla,vanilla-matched,blo-mixup $T300
#   $C --tasks sst2 --methods blo-mixup-paper $T300
#   $C --tasks stsb --methods blo-mixup-paper $T300
#   for m in dps-dense mixout pac-tuning child-tuning-d guided-dropout ftft; do $C --tasks sst2,stsb --methods $m $T300; done
#   for s in 6 7 8 9 10; do $C --tasks stsb --methods vanilla,mixout --seeds $s $T300; done
#   git worktree add ../wt-table2 cf14043
#   cd ../wt-table2 && export PYTHONPATH=$PWD
#   $C --tasks sst2,stsb --methods blo-mixup+unroll-steps=5 $T300
# The run folders (results.json, predictions, attention) are in git history up to commit 84be7d6:
#   git checkout 84be7d6 -- docs/results/table-300/runs
# summary.md, summary.png and results.csv from results.csv (trains nothing, reads no data), from the repository root:
blo-mixup compare --tasks sst2,stsb --methods vanilla,vanilla-matched,blo-mixup,blo-mixup-paper,blo-mixup+unroll-steps=5,dps-dense,mixout,pac-tuning,child-tuning-d,guided-dropout,ftft --seeds 1-10 --paired-against vanilla,vanilla-matched --epochs 10 --data-dir ../shared/data/glue --no-save-model --report-to none --output-dir docs/results/table-300 --report-only
