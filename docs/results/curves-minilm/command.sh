# Learning curves of plain fine-tuning on 500 held-out GLUE training rows (docs/results/README.md, "Choosing the
# protocol: learning curves on held-out training data").
# Runs: from a separate worktree at commit 8a2781f (the code of `blo-mixup curves` then), two processes with one
# thread each, 2-core CPU machine, 2026-12-03 and 04:
#   git worktree add ../wt-curves 8a2781f
#   cd ../wt-curves && export OMP_NUM_THREADS=1 PYTHONPATH=$PWD
#   C="python -m blo_mixup.cli curves --data-dir ../shared/data/glue --output-dir ../main/docs/results/curves-minilm"
#   $C --train-sizes 300 --epochs 10 --heldout-size 500 --tasks sst2,stsb,cola --heads cls,mean --seeds 1-3 --shard K/2   # K = 1, 2
#   $C --train-sizes 300 --epochs 10 --heldout-size 500 --tasks mrpc,rte --heads cls,mean --seeds 1-2 --shard K/2
#   $C --train-sizes 300 --epochs 10 --heldout-size 500 --tasks sst2,stsb,cola --heads cls,mean --seeds 4-5 --shard K/2
#   $C --train-sizes 1000 --epochs 6 --heldout-size 500 --heads cls --tasks cola,rte,mrpc --seeds 1
#   $C --train-sizes 1000 --epochs 6 --heldout-size 500 --heads cls --tasks cola,rte --seeds 2-5
#   $C --train-sizes 300 --epochs 10 --heldout-size 500 --heads cls --tasks sst2,stsb --lrs 2e-4 --seeds 1-3
#   $C --train-sizes 300 --epochs 10 --heldout-size 500 --heads cls --tasks sst2,stsb --lrs 5e-5 --seeds 1-3
#   (the later grids were stopped part-way: each configuration's seeds are those in curves.md; each run's JSON
#   in runs/ holds its full spec)
# Where plain fine-tuning is unstable (docs/results/README.md, "Where plain fine-tuning is unstable"): from a
# separate worktree at commit 7442d63, two processes (shards) with one thread each, 2-core CPU machine,
# 2026-12-07, into a copy of this folder's curves.csv (so the finished curves were skipped):
#   git worktree add ../wt-curves2 7442d63
#   cd ../wt-curves2 && export OMP_NUM_THREADS=1 PYTHONPATH=$PWD
#   C="python -m blo_mixup.cli curves --data-dir ../shared/data/glue --output-dir ../curves-unstable --train-sizes 300 --heads cls --heldout-size 500"
#   $C --tasks cola --epochs 10 --lrs 1e-4 --warmup-ratios 0.1 --seeds 6-10 --shard K/2   # K = 1, 2
#   $C --tasks cola --epochs 5 --lrs 1e-4 --warmup-ratios 0.1 --seeds 1-10 --shard K/2
#   $C --tasks cola --epochs 10 --lrs 3e-4 --warmup-ratios 0.1 --seeds 1-10 --shard K/2
#   $C --tasks cola --epochs 10 --lrs 1e-4 --warmup-ratios 0 --seeds 1-10 --shard K/2
#   $C --tasks rte --epochs 10 --lrs 1e-4 --warmup-ratios 0.1 --seeds 1-10 --shard K/2   # stopped after seed 2 (13 min a run)
#   # the second task (2026-12-07, fifteenth sitting; the same worktree and folder):
#   $C --tasks sst2,stsb --epochs 10 --lrs 3e-4 --warmup-ratios 0.1 --seeds 1-10 --shard K/2   # stopped part-way: sst2 seeds 2,4,6,8,10, stsb 1-3
#   C="python -m blo_mixup.cli curves --data-dir ../shared/data/glue --output-dir ../curves-unstable --heads cls --heldout-size 500"
#   $C --tasks sst2 --train-sizes 100 --epochs 10 --lrs 1e-4 --warmup-ratios 0.1 --seeds 1-10 --shard K/2
#   $C --tasks sst2 --train-sizes 50 --epochs 10 --lrs 1e-4 --warmup-ratios 0.1 --seeds 1-10 --shard K/2
#   $C --tasks sst2 --train-sizes 100 --epochs 10 --lrs 1e-3 --warmup-ratios 0.1 --seeds 1-10 --shard K/2
#   $C --tasks sst2 --train-sizes 100 --epochs 10 --lrs 2e-3 --warmup-ratios 0.1 --seeds 1-10 --shard K/2
#   cp ../curves-unstable/curves.csv docs/results/curves-minilm/   # then the report line below
# curves.csv, curves.md and curves.png from every finished run in runs/ (trains nothing), from the repository root:
blo-mixup curves --tasks sst2 --data-dir ../shared/data/glue --output-dir docs/results/curves-minilm --report-only
