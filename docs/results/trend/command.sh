# The trend over training-set sizes (docs/results/README.md, "The trend over training-set sizes"): vanilla against
# blo-mixup on SST-2 and STS-B at 300, 500 and 1000 examples, 10 epochs, seeds 1-5. The runs are those of
# table-300 (300) and of trend-500 and trend-1000 (their command.sh: worktree at commit 139258b, 2026-12-04 to 05).
# summary.md and trend.png from the three folders' results.csv (trains nothing, reads no data), from the repository root:
python docs/results/trend.py --seeds 1-5
