"""Reading index versions back: each is the dataset `indexes/<name>` (the id map), with its FAISS
or BM25 files stored beside it and its manifest in the catalog (datasets.meta)."""
from __future__ import annotations

import os
import posixpath
import tempfile

import pyarrow as pa
import pyarrow.fs as pafs

from tasks.index.lexical import BM25_NAME, LexicalIndex
from tasks.index.vector import VectorIndex
from tasks.runtime.catalog import Catalog, DatasetVersion
from tasks.runtime.publish import read_version
from tasks.runtime.storage import DataRoot

PREFIX = "indexes/"


def dataset_name(index: str) -> str:
    return PREFIX + index


class IndexStore:
    def __init__(self, catalog: Catalog, root: DataRoot):
        self.catalog, self.root = catalog, root
        self._tmp: tempfile.TemporaryDirectory | None = None

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
        manifest = self.catalog.meta(ref.name, ref.version)
        return VectorIndex.from_files(read_version(self.root, ref), manifest, self._local(ref, "index.faiss"))

    def load_lexical(self, ref: DatasetVersion | None = None) -> LexicalIndex | None:
        ref = ref or self.ref(BM25_NAME)
        if ref is None:
            return None
        manifest = self.catalog.meta(ref.name, ref.version)
        folder = self._local_dir(ref, "bm25") if ref.row_count else None
        return LexicalIndex.from_files(read_version(self.root, ref), manifest, folder)

    def items_of(self, name: str, version: int) -> pa.Table | None:
        """The id map of an earlier index version (what it held), or None when it is gone."""
        ref = self.catalog.version(dataset_name(name), version)
        if ref is None:
            return None
        try:
            return read_version(self.root, ref).sort_by("position")
        except (OSError, FileNotFoundError):
            return None

    # -- files of a version, as local paths --
    def _scratch(self) -> str:
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="corpusforge-index-")
        return self._tmp.name

    def _attachments(self, ref: DatasetVersion) -> str:
        base = self.catalog.meta(ref.name, ref.version).get("_attachments")
        if not base:
            raise FileNotFoundError(f"{ref.ref} has no index files attached; rebuild it with the index stage")
        return self.root.path(base)

    def _local(self, ref: DatasetVersion, filename: str) -> str:
        path = posixpath.join(self._attachments(ref), filename)
        if self.root.is_local:
            return path
        local = os.path.join(self._scratch(), f"{ref.name.replace('/', '__')}-v{ref.version}-{filename}")
        if not os.path.exists(local):
            self.root.download(path, local)
        return local

    def _local_dir(self, ref: DatasetVersion, folder: str) -> str:
        path = posixpath.join(self._attachments(ref), folder)
        if self.root.is_local:
            return path
        local = os.path.join(self._scratch(), f"{ref.name.replace('/', '__')}-v{ref.version}-{folder}")
        os.makedirs(local, exist_ok=True)
        for info in self.root.fs.get_file_info(pafs.FileSelector(path)):
            if info.is_file:
                self.root.download(info.path, os.path.join(local, posixpath.basename(info.path)))
        return local
