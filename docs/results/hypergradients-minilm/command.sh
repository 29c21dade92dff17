# How close each hypergradient comes to the exact ones on MiniLM (docs/hypergradients.md, "Accuracy on a real
# model"). From a separate worktree at commit 9862393, 2-core CPU machine, 2026-12-07; SST-2 alone on the machine
# (9 min 7 s wall, 4.4 GB resident), STS-B beside a test run for most of its 28 min (its seconds per call are inflated):
#   git worktree add ../wt-hg 9862393
#   cd ../wt-hg && export PYTHONPATH=$PWD
python -m blo_mixup.cli hypergradients --model minilm --task sst2 --train-size 300 --output-dir ../main/docs/results/hypergradients-minilm/sst2
python -m blo_mixup.cli hypergradients --model minilm --task stsb --data-dir ../shared/data/glue --train-size 300 --output-dir ../main/docs/results/hypergradients-minilm/stsb
# hypergradients.md rebuilds from hypergradients.csv alone: blo_mixup.hypergradient_check.summary_table(read_rows(csv))
