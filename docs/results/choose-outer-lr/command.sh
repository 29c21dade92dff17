# The outer learning rate of blo-mixup chosen on 500 held-out STS-B training rows, not the dev set
# (docs/results/README.md, "A larger outer learning rate, chosen on held-out rows").
# Runs: from a separate worktree at commit 33387ab, one seed at a time, 2-core CPU machine, 2026-12-04 to 2026-12-05:
#   git worktree add ../wt-outer 33387ab     # (the README names only the commit)
#   cd ../wt-outer && export OMP_NUM_THREADS=1 PYTHONPATH=$PWD
#   C="python -m blo_mixup.cli compare --seeds 1-5 --data-dir ../shared/data/glue --no-save-model --report-to none"
#   for K in 1 2 3; do $C --tasks stsb --methods vanilla,blo-mixup,blo-mixup+outer-lr=1e-2 --seeds $K --epochs 10 \
#       --heldout-size 500 --output-dir ../main/docs/results/choose-outer-lr; done
# The run folders (results.json, predictions, attention) are in git history up to commit 84be7d6:
#   git checkout 84be7d6 -- docs/results/choose-outer-lr/runs
# summary.md, summary.png and results.csv from results.csv (trains nothing, reads no data), from the repository root:
blo-mixup compare --tasks stsb --methods vanilla,blo-mixup,blo-mixup+outer-lr=1e-2 --seeds 1-3 --paired-against vanilla,blo-mixup --epochs 10 --heldout-size 500 --data-dir ../shared/data/glue --no-save-model --report-to none --output-dir docs/results/choose-outer-lr --report-only
