# A cheaper setting of blo-mixup on STS-B: --unroll-steps 5 --phase2-epochs 2, MiniLM, 300 examples, 3 epochs
# (docs/results/README.md, "Cheaper settings of blo-mixup, on STS-B"). Its runs used the hypergradient then called
# "darts", today's "darts-plain" (commit 4416c72).
# Runs: from the main checkout as it was then (committed in ad6fd55), one thread, 2-core CPU machine, 2026-12-03:
#   blo-mixup compare --tasks stsb --methods blo-mixup --unroll-steps 5 --phase2-epochs 2 --seeds 1-5 --model minilm \
#       --train-size 300 --data-dir ../shared/data/glue --no-save-model \
#       --output-dir docs/results/table-minilm-300-blo-mixup-unroll5-phase2-2ep
# The run folders (results.json, predictions, attention) are in git history up to commit 84be7d6:
#   git checkout 84be7d6 -- docs/results/table-minilm-300-blo-mixup-unroll5-phase2-2ep/runs
# summary.md, summary.png and results.csv from results.csv (trains nothing, reads no data), from the repository root:
blo-mixup compare --tasks stsb --methods blo-mixup --unroll-steps 5 --phase2-epochs 2 --seeds 1-5 --model minilm --train-size 300 --epochs 3 --data-dir ../shared/data/glue --no-save-model --output-dir docs/results/table-minilm-300-blo-mixup-unroll5-phase2-2ep --report-only
