"""The cross-encoder judge: a sentence-transformers CrossEncoder with one output per grade 0-3.

The cosine judge is a monotone function of the retriever's own similarity, so it can never tell
the retriever something new. A cross-encoder reads the query and the document together; trained
on graded labels (`corpusforge train-judge`, tasks.judge.train) it gives p_grade over 0-3 from a
softmax over its four outputs, like every other judge: grade = argmax, expected_grade = Σ g·p.

A model is named by the `judge.model` setting: a judge trained into the catalog (the dataset
`judge_models/<name>`, whose version folder holds the model), or the path of a CrossEncoder
folder with four labels. A model with another number of outputs is refused with the reason,
since a relevance score on its own is not a graded label.
"""
from __future__ import annotations

import hashlib
import json
import logging
import posixpath
from functools import lru_cache
from pathlib import Path

import numpy as np

GRADES = 4
MODEL_DIR = "model"  # the CrossEncoder folder inside a judge_models version
MANIFEST = "corpusforge_judge.json"  # written beside a trained model: what it was trained from
JUDGE_MODELS = "judge_models/"
TRAINED = ("cross_encoder", "features")  # the judge backends whose `judge.model` is a trained judge

log = logging.getLogger(__name__)


def model_dataset(name: str) -> str:
    return JUDGE_MODELS + name


def model_sha(path: str | Path) -> str:
    """A short content hash of a model folder (weights and config), its identity in judge names."""
    root = Path(path)
    stamp = tuple((f.name, f.stat().st_mtime_ns, f.stat().st_size) for f in sorted(root.rglob("*")) if f.is_file())
    return _model_sha(str(root), stamp)


@lru_cache(maxsize=16)
def _model_sha(path: str, stamp: tuple) -> str:
    h = hashlib.sha256()
    root = Path(path)
    for f in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".bin", ".json")):
        h.update(str(f.relative_to(root)).encode())
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()[:12]


def judge_identity(model: str, path: str | Path, kind: str = "cross_encoder") -> str:
    """cross-encoder:<model name>@<weights hash> (features:... for a feature judge): a retrained
    model is a different judge."""
    name = model.rstrip('/').split('/')[-1] if Path(model).exists() else model
    return f"{kind.replace('_', '-')}:{name}@{model_sha(path)}"


def resolve_model(config) -> tuple[str, object | None]:
    """(local folder of the judge's CrossEncoder, the judge_models version it came from or None).

    `judge.model` names a judge trained into the catalog, else a CrossEncoder folder.
    """
    from tasks.runtime.catalog import Catalog
    from tasks.runtime.storage import DataRoot

    model = config.judge.model
    known: list[str] = []
    if Path(config.catalog_path).exists():
        catalog = Catalog(config.catalog_path)
        ref = catalog.current(model_dataset(model))
        if ref is not None:
            return model_folder(ref, DataRoot(config.data_root_uri), catalog.meta(ref.name, ref.version)), ref
        known = [n[len(JUDGE_MODELS):] for n in catalog.current_all() if n.startswith(JUDGE_MODELS)]
    path = Path(config.resolve(model))
    if path.is_dir():
        return str(path), None
    hint = f"trained judges in the catalog: {', '.join(sorted(known))}" if known else \
        "the catalog has no trained judge yet (`corpusforge train-judge --labels LABEL_SET`)"
    raise FileNotFoundError(f"judge.model '{model}' is neither a trained judge in the catalog nor a CrossEncoder "
                            f"folder; {hint}")


def model_folder(ref, root, meta: dict) -> str:
    """The model folder of a judge_models version: its attached files, in place on a local data root,
    downloaded once per process from a remote one."""
    from tasks.runtime.storage import local_dir_copy

    base = meta.get("_attachments")
    if not base:
        raise FileNotFoundError(f"{ref.ref} has no model files attached; train it again (`corpusforge train-judge`)")
    return posixpath.join(local_dir_copy(root, root.path(base)), MODEL_DIR)


def read_manifest(path: str | Path) -> dict:
    f = Path(path) / MANIFEST
    return json.loads(f.read_text()) if f.exists() else {}


class CrossEncoderGrader:
    """p_grade for (query, document) pairs from a four-label CrossEncoder; built once per worker."""

    def __init__(self, path: str, device: str = "cpu", max_length: int = 256, batch_size: int = 32):
        from sentence_transformers.cross_encoder import CrossEncoder

        if not Path(path).is_dir():
            raise FileNotFoundError(f"no cross-encoder model folder at {path}; train one with "
                                    "`corpusforge train-judge` or set judge.model to a CrossEncoder folder")
        if read_manifest(path).get("format", "").startswith("corpusforge-features-judge"):
            raise ValueError(f"the judge model at {path} is a feature judge, not a cross-encoder: use "
                             "judge.backend: features for it")
        self.path = path
        self.model = CrossEncoder(path, device=device, max_length=max_length, local_files_only=True)
        n = int(getattr(self.model, "num_labels", 0) or self.model.config.num_labels)
        if n != GRADES:
            raise ValueError(f"the cross-encoder at {path} has {n} output(s); a judge needs {GRADES}, one per "
                             "grade 0-3 (train one from a label set with `corpusforge train-judge`)")
        self.batch_size = batch_size
        self.prior = read_manifest(path).get("prior")  # a trained correction of the cosine judge
        self.reads_cosine = bool(self.prior)

    def p_grade(self, queries: list[str], docs: list[str], cosines=None) -> np.ndarray:
        """(n, 4) probabilities; pairs of similar length share a batch, results in input order. A
        judge trained on a cosine prior adds its outputs to that judge's log-probabilities."""
        if not queries:
            return np.zeros((0, GRADES), np.float32)
        order = np.argsort([len(q) + len(d) for q, d in zip(queries, docs)], kind="stable")
        scores = self.model.predict([(queries[i], docs[i]) for i in order], batch_size=self.batch_size,
                                    apply_softmax=False, show_progress_bar=False, convert_to_numpy=True)
        logits = np.empty((len(queries), GRADES), np.float64)
        logits[order] = np.asarray(scores, np.float64).reshape(len(queries), GRADES)
        if self.prior:
            if cosines is None:
                raise ValueError("this judge corrects the cosine judge: it needs each pair's cosine")
            logits += prior_logp(self.prior, np.asarray(cosines, np.float64))
        z = np.exp(logits - logits.max(axis=1, keepdims=True))
        return (z / z.sum(axis=1, keepdims=True)).astype(np.float32)


def prior_logp(prior: dict, cosines: np.ndarray) -> np.ndarray:
    """log p_grade of the cosine judge a model was trained to correct (its thresholds, its temperature)."""
    from tasks.judge.offline_judge import grade_probabilities

    if prior.get("kind") != "offline-cosine":
        raise ValueError(f"unknown judge prior {prior.get('kind')!r}")
    p = grade_probabilities(cosines, prior["thresholds"], prior["temperature"])
    return np.log(np.clip(p.astype(np.float64), 1e-6, 1.0))


def prior_encoder(path: str | Path):
    """The text encoder whose cosines a trained judge reads: its cosine prior's, or a feature judge's
    (None when it reads no cosine)."""
    from schemas.config import TextEncoder

    manifest = read_manifest(path)
    encoder = (manifest.get("prior") or {}).get("encoder") or manifest.get("encoder")
    return TextEncoder.model_validate(encoder) if encoder is not None else None


def decision_cuts(path: str | Path) -> list[float] | None:
    """A trained judge's grade cutpoints on the expected grade (tasks.judge.features.decision_cuts);
    None for a model trained before them, which keeps grade = argmax."""
    return (read_manifest(path).get("decision") or {}).get("cuts")
