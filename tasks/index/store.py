"""Reading index versions back: each is the dataset `indexes/<name>` (the id map), with its FAISS
segments or BM25 files stored under the data root and its manifest in the catalog (datasets.meta)."""
from __future__ import annotations

import pyarrow as pa

from tasks.index.lexical import BM25_NAME, LexicalIndex
from tasks.index.vector import VectorIndex
from tasks.runtime.catalog import Catalog, DatasetVersion
from tasks.runtime.publish import read_version
from tasks.runtime.storage import DataRoot

PREFIX = "indexes/"


def load_vector_index(root: DataRoot, ref: DatasetVersion, manifest: dict) -> VectorIndex:
    """A vector index version: its id map from the dataset, its segment files from the data root."""
    from tasks.runtime.storage import local_copy

    base = manifest.get("_attachments")
    if not manifest.get("segments"):  # written before segments: one file, index.faiss
        manifest = manifest | {"segments": [{"file": "index.faiss", "dir": None, "first_id": 0}]}
    if not base and manifest["segments"]:
        raise FileNotFoundError(f"{ref.ref} has no index files attached; rebuild it with the index stage")

    def local(folder: str, filename: str) -> str:
        path = local_copy(root, root.path(folder, filename))
        if path is None:
            raise FileNotFoundError(f"{ref.ref}: index file {folder}/{filename} is missing from the data root; "
                                    "rebuild the index (corpusforge build)")
        return path

    return VectorIndex.load(read_version(root, ref), manifest, base, local)


def dataset_name(index: str) -> str:
    return PREFIX + index


def input_index(inputs, dataset: str = "indexes/text", previous: bool = False) -> VectorIndex | None:
    """A stage's input (or, with `previous`, its own previous) vector index; in a unit test, the
    VectorIndex handed in as that input."""
    ref = inputs.previous_ref(dataset) if previous else inputs.ref(dataset)
    if ref is None or inputs.root is None:
        held = inputs.get(dataset) if not previous else None
        return held if isinstance(held, VectorIndex) else None
    return load_vector_index(inputs.root, ref, inputs.meta(ref))


def input_lexical(inputs, dataset: str = "indexes/bm25") -> LexicalIndex | None:
    ref = inputs.ref(dataset)
    if ref is None or inputs.root is None:
        held = inputs.get(dataset)
        return held if isinstance(held, LexicalIndex) else None
    return load_lexical_index(inputs.root, ref, inputs.meta(ref))


def load_lexical_index(root: DataRoot, ref: DatasetVersion, manifest: dict) -> LexicalIndex:
    from tasks.runtime.storage import local_dir_copy

    base = manifest.get("_attachments")
    if ref.row_count and not base:
        raise FileNotFoundError(f"{ref.ref} has no index files attached; rebuild it with the index stage")
    folder = local_dir_copy(root, root.path(base, "bm25")) if ref.row_count else None
    return LexicalIndex.from_files(read_version(root, ref), manifest, folder)


class IndexStore:
    """The catalog's current indexes (CLI search, the `indexes` view); stages load through Inputs."""

    def __init__(self, catalog: Catalog, root: DataRoot):
        self.catalog, self.root = catalog, root

    def names(self) -> list[str]:
        return sorted(n[len(PREFIX):] for n in self.catalog.current_all() if n.startswith(PREFIX))

    def ref(self, name: str) -> DatasetVersion | None:
        return self.catalog.current(dataset_name(name))

    def current(self, name: str) -> dict | None:
        """The index's current version as a row of the `indexes` view, manifest decoded."""
        ref = self.ref(name)
        if ref is None:
            return None
        return {"name": name, "version": ref.version, "count": ref.row_count, "path": ref.path,
                "manifest": self.catalog.meta(ref.name, ref.version)}

    def load_vector(self, name: str, ref: DatasetVersion | None = None) -> VectorIndex | None:
        ref = ref or self.ref(name)
        if ref is None:
            return None
        return load_vector_index(self.root, ref, self.catalog.meta(ref.name, ref.version))

    def load_lexical(self, ref: DatasetVersion | None = None) -> LexicalIndex | None:
        ref = ref or self.ref(BM25_NAME)
        if ref is None:
            return None
        return load_lexical_index(self.root, ref, self.catalog.meta(ref.name, ref.version))

    def items_of(self, name: str, version: int) -> pa.Table | None:
        """The id map of an earlier index version (what it held), or None when it is gone."""
        ref = self.catalog.version(dataset_name(name), version)
        if ref is None:
            return None
        try:
            return read_version(self.root, ref).sort_by("position")
        except (OSError, FileNotFoundError):
            return None
