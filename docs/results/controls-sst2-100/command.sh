# Issue 31's controls table, second task: SST-2 at 100 examples, lr 1e-3, warmup 10%, 10 epochs, 10 seeds: the
# least stable SST-2 setting the held-out curves found whose mean stays clearly above the constant (1 of 10
# runs fails there; docs/results/README.md, "Where plain fine-tuning is unstable"; chosen on held-out
# training rows, not on this dev set).
# Runs: from the worktree of the CoLA table (commit e86b414; the package code is the same at 12b8ef5),
# `compare --workers 2` (two processes, one core each, one CPU thread per run), 2-core CPU machine,
# 2026-12-07, fifteenth sitting, on an otherwise idle machine:
#   git worktree add ../wt-controls e86b414
#   cd ../wt-controls && export PYTHONPATH=$PWD
#   C="python -m blo_mixup.cli compare --tasks sst2 --train-size 100 --lr 1e-3 --epochs 10 --data-dir ../shared/data/glue --no-save-model --report-to none --output-dir ../controls-sst2-100 --workers 2"
#   $C --methods blo-mixup,vanilla,mixout,vanilla-matched,interpolate --seeds 1-10
#   # the fixed-A control at c = 0.99: the mean over blo-mixup's 10 runs of attention_mean (the mean of A's
#   # per-matrix means at the end of a run), to two decimals
#   $C --methods fixed-attention+attention=0.99 --seeds 1-10
# summary.md, summary.png and results.csv from results.csv (trains nothing, reads no data), from the repository root:
blo-mixup compare --tasks sst2 --methods vanilla,mixout,blo-mixup,vanilla-matched,fixed-attention+attention=0.99,interpolate --seeds 1-10 --paired-against vanilla,blo-mixup --train-size 100 --lr 1e-3 --epochs 10 --data-dir ../shared/data/glue --no-save-model --report-to none --output-dir docs/results/controls-sst2-100 --report-only
