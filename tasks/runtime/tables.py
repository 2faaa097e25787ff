"""Small Arrow helpers every stage shares."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def first_per_key(table: pa.Table, key: str | list[str]) -> pa.Table:
    """The first row of each key (in table order): units sharing a key share one model call,
    and shards of a retried batch may repeat keys."""
    if table.num_rows == 0:
        return table
    keys = [key] if isinstance(key, str) else list(key)
    idx = pa.table({**{k: table[k] for k in keys}, "_i": pa.array(np.arange(table.num_rows))}) \
        .group_by(keys, use_threads=False).aggregate([("_i", "min")])
    return table.take(pa.array(np.sort(idx["_i_min"].to_numpy()), pa.int64()))


def column_or_nulls(table: pa.Table, name: str, type_: pa.DataType) -> pa.Array:
    """A column when the table has it, else NULLs (optional manifest fields, older datasets)."""
    if name in table.column_names:
        return table[name].combine_chunks().cast(type_)
    return pa.nulls(table.num_rows, type_)


def vectors(table: pa.Table, column: str = "vector") -> np.ndarray:
    """A fixed-size (or variable) list column of floats as an (n, d) float32 matrix."""
    col = table[column].combine_chunks() if table.num_rows else None
    if col is None:
        return np.zeros((0, 0), np.float32)
    dim = col.type.list_size if pa.types.is_fixed_size_list(col.type) else len(col[0])
    return pc.list_flatten(col).to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, dim)


def fixed_vectors(matrix: np.ndarray) -> pa.FixedSizeListArray:
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    dim = matrix.shape[1] if matrix.ndim == 2 else 0
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.ravel(), pa.float32()), dim)
