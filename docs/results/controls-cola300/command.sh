# Issue 31's controls table: CoLA at 300 examples, lr 3e-4, warmup 10%, 10 epochs, 10 seeds: the regime the
# held-out curves chose because plain fine-tuning fails there on 2 of 10 seeds (docs/results/README.md,
# "Where plain fine-tuning is unstable"; chosen on held-out training rows, not on this dev set).
# Runs: from a separate worktree at commit e86b414, `compare --workers 2` (two processes, one core each,
# one CPU thread per run), 2-core CPU machine, 2026-12-07; vanilla and mixout in the twelfth sitting (beside
# test runs part of the time), the other rows in the thirteenth on an otherwise idle machine: times are rough.
#   git worktree add ../wt-controls e86b414
#   cd ../wt-controls && export PYTHONPATH=$PWD
#   C="python -m blo_mixup.cli compare --tasks cola --train-size 300 --lr 3e-4 --epochs 10 --data-dir ../shared/data/glue --no-save-model --report-to none --output-dir ../controls-cola300 --workers 2"
#   $C --methods vanilla,mixout --seeds 1-10
#   $C --methods vanilla,mixout,blo-mixup,vanilla-matched,interpolate --seeds 1-10
#   # the fixed-A control at c = 0.98: the mean over blo-mixup's 10 runs of attention_mean (the mean of
#   # A's per-matrix means at the end of a run: 0.976-0.983 per run), to two decimals
#   $C --methods fixed-attention+attention=0.98 --seeds 1-10
# summary.md, summary.png and results.csv from results.csv (trains nothing, reads no data), from the repository root:
blo-mixup compare --tasks cola --methods vanilla,mixout,blo-mixup,vanilla-matched,fixed-attention+attention=0.98,interpolate --seeds 1-10 --paired-against vanilla,blo-mixup --train-size 300 --lr 3e-4 --epochs 10 --data-dir ../shared/data/glue --no-save-model --report-to none --output-dir docs/results/controls-cola300 --report-only
