"""Inputs stored as shard files, read row range by row range: a Parquet file, or a folder of Parquet
files or of .npy files, whose rows follow each other in file-name order.

Invariant: `Shards.read(start, stop)` is float32 ``[stop - start, *shape]`` and opens only the files
(and, in Parquet, only the row groups) that hold those rows; nothing reads every input at once but a
caller asking for all the rows. The values are those stored, cast to float32 as `data.check_inputs`
casts arrays (integers refused), so the same rows give the same report as from a .npz file.

Parquet schema: column ``x`` holds one input per row, either as Arrow's ``fixed_shape_tensor``
extension type (the shape comes with it) or as a list / fixed-size list of floating-point values,
each row ``prod(shape)`` long, with the shape in the schema's metadata key ``snncc.shape`` (JSON,
e.g. ``[1, 28, 28]``; without it a row is a flat vector). An optional integer column ``label`` holds
the class indices. Every file of a folder has the same row shape. A folder of .npy files holds
inputs only (labels: ``--labels``); each file is memory-mapped.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib

import numpy as np

from snncc.data import check_inputs, memory_map
from snncc.errors import SnnccError

SHAPE_KEY = b"snncc.shape"
SUFFIXES = (".parquet", ".npy")


def is_shards(spec: str) -> bool:
    """Whether `spec` names a Parquet file or a folder (of shard files)."""
    path = pathlib.Path(spec)
    return path.suffix.lower() == ".parquet" or path.is_dir()


@dataclasses.dataclass(frozen=True)
class Shards:
    """The files of a spec with their row counts and one row's shape (picklable: paths only)."""

    spec: str
    files: tuple[str, ...]
    counts: tuple[int, ...]
    shape: tuple[int, ...]
    labelled: bool  # Parquet files with a column ``label``

    @property
    def rows(self) -> int:
        return sum(self.counts)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows start..stop-1 as float32 [stop - start, *shape], from the files that hold them."""
        parts = [np.empty((0, *self.shape), np.float32)]
        offset = 0
        for file, count in zip(self.files, self.counts):
            first, last = max(start, offset), min(stop, offset + count)
            if first < last:
                parts.append(_read_file(file, first - offset, last - offset, self.shape))
            offset += count
        return np.concatenate(parts)

    def labels(self) -> np.ndarray | None:
        """The ``label`` column of every file as int64, None when the files have none."""
        if not self.labelled:
            return None
        columns = [_parquet(file).read(columns=["label"]).column("label") for file in self.files]
        for file, column in zip(self.files, columns):
            if not _is_integer(column.type) or column.null_count:
                raise SnnccError(f"data file {file}: column 'label' is {column.type}"
                                 f"{' with nulls' if column.null_count else ''}; expected integer class indices")
        return np.concatenate([column.to_numpy() for column in columns]).astype(np.int64)


@functools.lru_cache(maxsize=4)
def open_shards(spec: str) -> Shards:
    """The Shards of `spec`, every file's schema checked (column ``x``, one row shape, ``label`` in all
    files or none), reading no inputs."""
    path = pathlib.Path(spec)
    if not path.exists():
        raise SnnccError(f"data {spec} not found")
    files = sorted(str(p) for p in path.iterdir() if p.suffix.lower() in SUFFIXES) if path.is_dir() else [str(path)]
    kinds = {pathlib.Path(f).suffix.lower() for f in files}
    if len(kinds) != 1:
        found = "no .parquet or .npy files" if not kinds else "both .parquet and .npy files"
        raise SnnccError(f"data folder {spec} holds {found}; expected shard files of one kind")
    layouts = [_parquet_layout(f) if f.endswith(".parquet") else _npy_layout(f) for f in files]
    shapes = {shape for _, shape, _ in layouts}
    if len(shapes) != 1:
        raise SnnccError(f"data {spec}: its files hold rows of different shapes {sorted(map(list, shapes))}")
    labelled = {labelled for _, _, labelled in layouts}
    if len(labelled) != 1:
        raise SnnccError(f"data {spec}: some files have a column 'label' and some do not")
    return Shards(spec, tuple(files), tuple(count for count, _, _ in layouts), shapes.pop(), labelled.pop())


def _parquet(file: str):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise SnnccError(f"reading {file} needs pyarrow: pip install pyarrow") from None
    try:
        return pq.ParquetFile(file)
    except (OSError, ValueError) as error:
        raise SnnccError(f"cannot read data file {file}: {error}") from None


def _parquet_layout(file: str) -> tuple[int, tuple[int, ...], bool]:
    """(rows, row shape, has labels) of a Parquet file, from its metadata and schema."""
    parquet = _parquet(file)
    schema = parquet.schema_arrow
    if "x" not in schema.names:
        raise SnnccError(f"data file {file} has no column 'x' (found: {', '.join(schema.names) or 'none'})")
    kind = schema.field("x").type
    storage = kind.storage_type if hasattr(kind, "storage_type") else kind
    values = getattr(storage, "value_type", None)
    if values is None or not (_is_float(values) or _is_integer(values)):
        raise SnnccError(f"data file {file}: column 'x' is {kind}; expected one list of floating-point values per row")
    if hasattr(kind, "shape"):  # fixed_shape_tensor
        if list(kind.permutation or range(len(kind.shape))) != list(range(len(kind.shape))):
            raise SnnccError(f"data file {file}: column 'x' is {kind}; expected rows stored in their own dimension "
                             "order (no permutation: write it from np.ascontiguousarray(x).copy())")
        shape = tuple(int(n) for n in kind.shape)
    elif SHAPE_KEY in (schema.metadata or {}):
        shape = _shape_metadata(schema.metadata[SHAPE_KEY], file)
    else:
        shape = (storage.list_size,) if hasattr(storage, "list_size") else (-1,)
    size = getattr(storage, "list_size", None)
    if size is not None and -1 not in shape and size != int(np.prod(shape)):
        raise SnnccError(f"data file {file}: column 'x' holds {size} values per row, but its shape {list(shape)} "
                         f"has {int(np.prod(shape))}")
    rows = parquet.metadata.num_rows
    if -1 in shape and rows:  # a flat list column: its first row gives the length that every row must have
        shape = (len(parquet.read_row_group(0, columns=["x"]).column("x")[0]),)
    return rows, shape, "label" in schema.names


def _shape_metadata(text: bytes, file: str) -> tuple[int, ...]:
    """The row shape that the schema metadata `snncc.shape` gives (a JSON list of positive integers)."""
    try:
        shape = json.loads(text)
    except ValueError:
        shape = None
    if not isinstance(shape, list) or not all(isinstance(n, int) and n > 0 for n in shape):
        raise SnnccError(f"data file {file}: schema metadata snncc.shape is {text.decode(errors='replace')!r}; "
                         "expected a JSON list of positive integers such as [1, 28, 28]")
    return tuple(shape)


def _npy_layout(file: str) -> tuple[int, tuple[int, ...], bool]:
    x = memory_map(file)
    check_inputs(np.asarray(x[:1]), f"data file {file}")
    return len(x), tuple(x.shape[1:]), False


def _read_file(file: str, start: int, stop: int, shape: tuple[int, ...]) -> np.ndarray:
    if not file.endswith(".parquet"):
        return np.ascontiguousarray(memory_map(file)[start:stop], dtype=np.float32)
    parquet = _parquet(file)
    sizes = [parquet.metadata.row_group(i).num_rows for i in range(parquet.num_row_groups)]
    ends = np.cumsum(sizes)
    first, last = int(np.searchsorted(ends, start, side="right")), int(np.searchsorted(ends, stop - 1, side="right"))
    offset = int(ends[first] - sizes[first])
    column = parquet.read_row_groups(range(first, last + 1), columns=["x"]).column("x")
    return _tensor_rows(column.slice(start - offset, stop - start).combine_chunks(), shape, file, start)


def _tensor_rows(array, shape: tuple[int, ...], file: str, start: int) -> np.ndarray:
    """One Arrow list column's rows as float32 [rows, *shape]; SnnccError for a null or a row of another length."""
    storage = array.storage if hasattr(array, "storage") else array
    size = int(np.prod(shape))
    if storage.null_count:
        row = start + int(np.flatnonzero(storage.is_null().to_numpy(zero_copy_only=False))[0])
        raise SnnccError(f"data file {file}: row {row} of column 'x' is null")
    if not hasattr(storage.type, "list_size"):
        lengths = storage.value_lengths().to_numpy()
        wrong = np.flatnonzero(lengths != size)
        if len(wrong):
            raise SnnccError(f"data file {file}: row {start + int(wrong[0])} of column 'x' holds "
                             f"{lengths[wrong[0]]} values, expected {size} (shape {list(shape)})")
    values = storage.flatten()
    if values.null_count:
        raise SnnccError(f"data file {file}: column 'x' holds nulls in rows {start}..{start + len(storage) - 1}")
    return check_inputs(values.to_numpy(zero_copy_only=False).reshape(len(storage), *shape), f"data file {file}")


def _is_float(kind) -> bool:
    import pyarrow as pa

    return pa.types.is_floating(kind)


def _is_integer(kind) -> bool:
    import pyarrow as pa

    return pa.types.is_integer(kind)
