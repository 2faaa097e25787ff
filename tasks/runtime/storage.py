"""The data root: a local folder or an object store (s3://bucket/prefix, gs://...).

The catalog stores every path relative to the data root, so a catalog and its data can be
moved or copied together. For S3 the endpoint comes from `AWS_ENDPOINT_URL` when set (a MinIO
or moto server), the credentials from the usual AWS environment; they are never stored.
"""
from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq


def _s3_filesystem() -> pafs.S3FileSystem:
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")
    kwargs = {"region": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"}
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        kwargs |= {"endpoint_override": host or endpoint, "scheme": scheme if host else "https"}
    return pafs.S3FileSystem(**kwargs)


def storage_options_for(uri: str) -> dict[str, str]:
    """Lance's object-store options for a URI (the endpoint of a local S3 server); no secrets."""
    if not uri.startswith("s3://"):
        return {}
    opts = {"aws_region": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"}
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")
    if endpoint:
        opts["aws_endpoint"] = endpoint
        if endpoint.startswith("http://"):
            opts["allow_http"] = "true"
    return opts


@dataclass
class DataRoot:
    uri: str
    storage_options: dict = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        if self.uri.startswith("s3://"):
            self.fs, self.base = _s3_filesystem(), self.uri[len("s3://"):].rstrip("/")
            self.scheme = "s3://"
        else:
            self.fs, self.base = pafs.FileSystem.from_uri(self.uri if "://" in self.uri else _local_uri(self.uri))
            self.scheme = "" if isinstance(self.fs, pafs.LocalFileSystem) else self.uri.split("://")[0] + "://"
        self.storage_options = storage_options_for(self.uri)
        self.fs.create_dir(self.base, recursive=True)

    def __reduce__(self):  # a worker rebuilds the filesystem from the URI (and its own environment)
        return (DataRoot, (self.uri,))

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def path(self, *parts: str) -> str:
        """A filesystem path under the root (bucket/prefix/... for object stores). A first part that is
        already a path under the root is kept as is: object-store paths have no leading `/`, so joining
        one to the base again would nest the root inside itself."""
        if parts and (parts[0] == self.base or parts[0].startswith(self.base + "/")):
            return posixpath.join(*parts)
        return posixpath.join(self.base, *parts)

    def lance_uri(self, name: str) -> str:
        """Where a dataset's Lance table lives: `<root>/<name with / as __>.lance`."""
        return self.scheme + self.path(name.replace("/", "__") + ".lance")

    def relative(self, path: str) -> str:
        """A path as the catalog stores it: relative to the root when it lies under it."""
        bare = path[len(self.scheme):] if self.scheme and path.startswith(self.scheme) else path
        if bare == self.base:
            return "."
        if bare.startswith(self.base + "/"):
            return bare[len(self.base) + 1:]
        return path

    def absolute(self, path: str) -> str:
        """A catalog path back as a URI (object stores) or an absolute path (local)."""
        if "://" in path or path.startswith("/"):
            return path
        return self.scheme + self.path(path)

    def write(self, table: pa.Table, path: str) -> None:
        self.fs.create_dir(posixpath.dirname(path), recursive=True)
        pq.write_table(table, path, filesystem=self.fs, compression="zstd")

    def read(self, path: str, columns: list[str] | None = None) -> pa.Table:
        return pq.read_table(path, filesystem=self.fs, columns=columns)

    def exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def move(self, src: str, dst: str) -> None:
        self.fs.create_dir(posixpath.dirname(dst), recursive=True)
        self.fs.move(src, dst)

    def upload(self, local: str, path: str) -> None:
        """Copy a local file to a path under the root (any filesystem)."""
        self.fs.create_dir(posixpath.dirname(path), recursive=True)
        with open(local, "rb") as src, self.fs.open_output_stream(path) as dst:
            while chunk := src.read(1 << 22):
                dst.write(chunk)

    def download(self, path: str, local: str) -> None:
        with self.fs.open_input_stream(path) as src, open(local, "wb") as dst:
            while chunk := src.read(1 << 22):
                dst.write(chunk)

    def delete_dir(self, path: str) -> None:
        if self.exists(path):
            self.fs.delete_dir(path)

    def list_files(self, path: str, suffix: str = ".parquet") -> list[str]:
        if not self.exists(path):
            return []
        sel = pafs.FileSelector(path, recursive=True)
        return sorted(i.path for i in self.fs.get_file_info(sel) if i.is_file and i.path.endswith(suffix))

    def bytes_under(self, path: str | None = None) -> int:
        """Total size of the files under a path (benchmarks: bytes a run wrote)."""
        target = path or self.base
        if not self.exists(target):
            return 0
        return sum(i.size or 0 for i in self.fs.get_file_info(pafs.FileSelector(target, recursive=True)) if i.is_file)


def local_copy(root: DataRoot, path: str) -> str | None:
    """A local path for a file under the root: itself when the root is local, else a download into
    this process's scratch folder (once per file). None when the file does not exist."""
    if not root.exists(path):
        return None
    if root.is_local:
        return path
    local = os.path.join(_scratch(), hashlib_short(path) + "-" + posixpath.basename(path))
    if not os.path.exists(local):
        root.download(path, local + ".part")
        os.replace(local + ".part", local)
    return local


def local_dir_copy(root: DataRoot, path: str) -> str:
    """A local folder with the files under a root folder (itself when the root is local)."""
    if root.is_local:
        return path
    folder = os.path.join(_scratch(), "dir-" + hashlib_short(path))
    os.makedirs(folder, exist_ok=True)
    for f in root.list_files(path, suffix=""):
        target = os.path.join(folder, posixpath.relpath(f, path))
        if not os.path.exists(target):
            os.makedirs(os.path.dirname(target), exist_ok=True)
            root.download(f, target)
    return folder


def hashlib_short(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _scratch() -> str:
    global _SCRATCH
    if _SCRATCH is None:
        import tempfile

        _SCRATCH = tempfile.TemporaryDirectory(prefix="corpusforge-downloads-")
    return _SCRATCH.name


_SCRATCH = None


def _local_uri(path: str) -> str:
    p = Path(path).expanduser().resolve()
    p.mkdir(parents=True, exist_ok=True)
    return p.as_uri()
