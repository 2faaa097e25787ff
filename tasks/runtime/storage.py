"""The data root: a local folder or any pyarrow filesystem URI (s3://, gs://, file://)."""
from __future__ import annotations

import posixpath
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq


@dataclass
class DataRoot:
    uri: str

    def __post_init__(self) -> None:
        self.fs, self.base = pafs.FileSystem.from_uri(self.uri if "://" in self.uri else _local_uri(self.uri))
        self.fs.create_dir(self.base, recursive=True)

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def path(self, *parts: str) -> str:
        return posixpath.join(self.base, *parts)

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

    def local_path(self, path: str) -> str | None:
        """The OS path of a file under a local root, else None."""
        return path if self.is_local else None

    def delete_dir(self, path: str) -> None:
        if self.exists(path):
            self.fs.delete_dir(path)

    def list_files(self, path: str, suffix: str = ".parquet") -> list[str]:
        if not self.exists(path):
            return []
        sel = pafs.FileSelector(path, recursive=True)
        return sorted(i.path for i in self.fs.get_file_info(sel) if i.is_file and i.path.endswith(suffix))


def _local_uri(path: str) -> str:
    from pathlib import Path

    p = Path(path).expanduser().resolve()
    p.mkdir(parents=True, exist_ok=True)
    return p.as_uri()
