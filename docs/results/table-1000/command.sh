# CoLA at 1000 examples, 6 epochs (docs/results/README.md, "The table under the settled protocol").
# Runs: from a separate worktree at commit 139258b (cf14043 for the blo-mixup+unroll-steps=5 row and the seeds 6-8
# lane), two processes with one thread each, 2-core CPU machine, 2026-12-04 to 2026-12-05:
#   git worktree add ../wt-table 139258b
#   cd ../wt-table && export OMP_NUM_THREADS=1 PYTHONPATH=$PWD
#   C="python -m blo_mixup.cli compare --seeds 1-5 --data-dir ../shared/data/glue --no-save-model --report-to none"
#   T1000="--epochs 6 --train-size 1000 --output-dir ../main/docs/results/table-1000"
#   $C --tasks cola --methods vanilla,vanilla-matched,blo-mixup $T1000
#   $C --tasks cola --methods blo-mixup-paper $T1000            # one seed at a time
#   for m in dps-dense mixout pac-tuning child-tuning-d guided-dropout ftft; do $C --tasks cola --methods $m $T1000; done
#   git worktree add ../wt-table2 cf14043
#   cd ../wt-table2 && export PYTHONPATH=$PWD
#   $C --tasks cola --methods blo-mixup+unroll-steps=5 $T1000
#   for s in 6 7 8 9 10; do $C --tasks cola --methods vanilla,vanilla-matched,blo-mixup+unroll-steps=5 --seeds $s $T1000; done
#   # 6, 7 done; stopped after seed 8's vanilla run (its row is in results.csv, outside the seeds 1-7 summary)
# (seed 8 is outside this report's seeds; its row keeps the constant_score that the same line with --seeds 1-8 filled in)
# The run folders (results.json, predictions, attention) are in git history up to commit 84be7d6:
#   git checkout 84be7d6 -- docs/results/table-1000/runs
# summary.md, summary.png and results.csv from results.csv (trains nothing, reads no data), from the repository root:
blo-mixup compare --tasks cola --methods vanilla,vanilla-matched,blo-mixup,blo-mixup-paper,blo-mixup+unroll-steps=5,dps-dense,mixout,pac-tuning,child-tuning-d,guided-dropout,ftft --seeds 1-7 --paired-against vanilla,vanilla-matched --epochs 6 --train-size 1000 --data-dir ../shared/data/glue --no-save-model --report-to none --output-dir docs/results/table-1000 --report-only
