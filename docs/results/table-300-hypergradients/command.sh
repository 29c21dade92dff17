# blo-mixup with each hypergradient on SST-2 at 300 examples, 10 epochs (docs/results/README.md, "Which
# hypergradient: the end score"). The vanilla and blo-mixup (darts, the default) rows, seeds 1-5, are
# table-300's runs: their rows were copied from docs/results/table-300/results.csv into the output folder
# first, so the command below skipped them and the pairs share seeds (subsample, head and data order).
# Runs: from a separate worktree at commit 78da728, `compare --workers 2` (two processes, one core each),
# 2-core CPU machine, 2026-12-07 (beside test runs part of the time: the times are rough):
#   git worktree add ../wt-hgtable 78da728
#   cd ../wt-hgtable && export PYTHONPATH=$PWD
#   C="python -m blo_mixup.cli compare --tasks sst2 --epochs 10 --data-dir ../shared/data/glue --no-save-model --report-to none --output-dir ../hg-table --workers 2"
#   $C --methods blo-mixup+hypergradient=darts-plain,blo-mixup+hypergradient=sama,blo-mixup+hypergradient=direct-only --seeds 1-5
#   # the thirteenth sitting (2026-12-07), same worktree and folder: neumann first (its seeds 1-2 beside a test
#   # suite), then cg (started while neumann's seed 3 ran: three runs on two cores for about 20 minutes)
#   $C --methods blo-mixup+hypergradient=neumann --seeds 1-3
#   $C --methods blo-mixup+hypergradient=cg --seeds 1-3
#   # the fourteenth sitting (2026-12-07), same worktree and folder: two processes, each pinned to one core and
#   # walking the same plan (each run claimed once), so nystrom's seeds 1-2 ran side by side, then seed 3 beside
#   # the --levels 3 runs; the --levels 3 row's middle level uses darts-plain (docs/three-levels.md); the
#   # --workers 1 after $C overrides its --workers 2 (the last value wins), so each process keeps its one core
#   for core in 0 1; do ( taskset -c $core $C --workers 1 --methods blo-mixup+hypergradient=nystrom --seeds 1-3
#                         taskset -c $core $C --workers 1 --methods blo-mixup+levels=3 --seeds 1-5 ) & done
# summary.md, summary.png and results.csv from results.csv (trains nothing, reads no data), from the repository root:
blo-mixup compare --tasks sst2 --methods vanilla,blo-mixup,blo-mixup+hypergradient=darts-plain,blo-mixup+hypergradient=sama,blo-mixup+hypergradient=direct-only,blo-mixup+hypergradient=neumann,blo-mixup+hypergradient=cg,blo-mixup+hypergradient=nystrom,blo-mixup+levels=3 --seeds 1-5 --paired-against vanilla,blo-mixup --epochs 10 --data-dir ../shared/data/glue --no-save-model --report-to none --output-dir docs/results/table-300-hypergradients --report-only
