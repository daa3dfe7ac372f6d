"""Parquet shards of image bytes -> samples, `SHARD::ID` each (binary columns, or Hugging
Face's image struct); and their footers, read once before a run.

A repeated id gets `#2`, `#3`... in the order met; a null id is the row number.

A Hugging Face image whose `bytes` are null and whose `path` is set is only referenced: a
relative path is read from the shard's folder on the shard's store (as a file beside the shard,
bounded by --max-bytes); an absolute path, a URI or a path that leaves the folder (`..`) is
not followed, so a hostile shard cannot make a run read /etc/shadow or another host. A
shard's rows give at most --max-shard-bytes of image bytes, held or referenced."""

from __future__ import annotations

import posixpath
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from effnet_ray.errors import UserError
from effnet_ray.inputs.fetch import check_regular, read_object
from effnet_ray.inputs.samples import (
    SEPARATOR,
    ReadTask,
    Sample,
    ShardTooLarge,
    Skip,
    UniquePaths,
    describe,
    too_large,
)
from effnet_ray.storage import (
    LOCAL,
    Unreachable,
    display,
    is_transient,
    named_errors,
    open_fs,
    printable,
    protocol_of,
    redact,
    short_reason,
)

ROWS_PER_BATCH = 8


def _is_bytes(kind: pa.DataType) -> bool:
    return pa.types.is_binary(kind) or pa.types.is_large_binary(kind) \
        or pa.types.is_fixed_size_binary(kind)


def image_column_problem(schema: pa.Schema, column: str) -> str | None:
    """Why `column` of a Parquet schema cannot hold image bytes, or None."""
    if column not in schema.names:
        return f"no image column '{column}' (columns: {', '.join(schema.names[:20])})"
    kind = schema.field(column).type
    if _is_bytes(kind):
        return None
    if pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0 \
            and _is_bytes(kind.field("bytes").type):
        return None  # Hugging Face's Image feature: {"bytes": ..., "path": ...}
    return f"image column '{column}' holds {kind}, not image bytes"


def read_footers(uris: list[str], column: str, storage_options: dict | None
                 ) -> dict[str, int | None]:
    """Each Parquet shard's row count from its footer (None if it cannot be read: its own
    row will say why), read once before any work. A wrong --image-column is an argument
    error, found on the first readable shard."""
    rows: dict[str, int | None] = {}
    checked = False
    for uri in uris:
        fs, path = open_fs(uri, storage_options)
        try:
            with named_errors(uri):
                check_regular(fs, path)
                with fs.open(path, "rb") as f:
                    footer = pq.ParquetFile(f)
                    schema, rows[uri] = footer.schema_arrow, footer.metadata.num_rows
        except Unreachable:
            raise
        except UserError:
            rows[uri] = None
            continue
        except Exception:  # a corrupt file: its own row says so
            rows[uri] = None
            continue
        problem = None if checked else image_column_problem(schema, column)
        if problem:
            raise UserError(f"{redact(uri)} has {problem}; choose one with --image-column")
        checked = True
    return rows


def _id_text(ident: object, row: int) -> str:
    if ident is None:
        return str(row)
    if isinstance(ident, bytes):
        return printable(ident.decode("utf-8", "surrogateescape"), local=False)
    return str(ident)


def parquet_samples(uri: str, size: int | None, version: str | None, task: ReadTask,
                    skip: Skip) -> Iterator[Sample | None]:
    """Rows of a Parquet shard; row groups whose rows are all done are not read (but their
    ids are, so that the paths of later rows stay the same)."""
    opts = task.options
    shard = printable(redact(uri))
    unique = UniquePaths()
    fs, path = open_fs(uri, task.storage_options)
    folder = display(fs, posixpath.dirname(path))
    row = given = 0
    try:
        check_regular(fs, path)
        with fs.open(path, "rb") as f:
            parquet = pq.ParquetFile(f)
            problem = image_column_problem(parquet.schema_arrow, opts.image_column)
            if problem:
                yield Sample(shard, error=problem, size=size, version=version)
                return
            has_id = opts.id_column in parquet.schema_arrow.names
            for group in range(parquet.num_row_groups):
                count = parquet.metadata.row_group(group).num_rows
                if all(skip(i) for i in range(row, row + count)):
                    ids = (parquet.read_row_group(group, columns=[opts.id_column])
                           .column(0).to_pylist() if has_id else [None] * count)
                    for ident in ids:
                        unique(f"{shard}{SEPARATOR}{_id_text(ident, row)}")
                        yield None
                        row += 1
                    continue
                columns = [opts.image_column] + ([opts.id_column] if has_id else [])
                for batch in parquet.iter_batches(batch_size=ROWS_PER_BATCH,
                                                  row_groups=[group], columns=columns):
                    ids = batch.column(1).to_pylist() if has_id else [None] * batch.num_rows
                    images = batch.column(0)
                    lengths = _lengths(images)
                    for index, ident in enumerate(ids):
                        item = unique(f"{shard}{SEPARATOR}{_id_text(ident, row)}")
                        sample = None if skip(row) else _row_sample(
                            item, images, index, lengths[index], folder, task, size, version)
                        got = len(sample.data) if sample and sample.data else 0
                        yield sample
                        row += 1
                        given += got
                        if given > opts.max_shard_bytes:
                            raise ShardTooLarge(f"more than {opts.max_shard_bytes} bytes of "
                                                "images, held or referenced; the rest is not "
                                                "read")
    except ShardTooLarge as exc:
        yield Sample(shard, error=f"{exc.stopped} after row {row - 1} ({exc})", size=size,
                     version=version)
    except Exception as exc:  # the shard's boundary
        if is_transient(exc, fs):
            raise
        where = f" after row {row}" if row else ""
        yield Sample(shard, error=f"unreadable Parquet shard{where} ({short_reason(exc)})",
                     size=size, version=version)


def _lengths(images: pa.Array) -> list[int | None]:
    """Each row's length of image bytes, read before any value becomes a Python object."""
    values = images.field("bytes") if pa.types.is_struct(images.type) else images
    return pc.binary_length(values).to_pylist()


def _row_sample(path: str, images: pa.Array, index: int, length: int | None, folder: str,
                task: ReadTask, size: int | None, version: str | None) -> Sample:
    """Row `index` of a batch's image column; bytes over --max-bytes are never copied out."""
    sample = Sample(path, size=size, version=version)
    limit = task.options.max_bytes
    if length is not None and length > limit:
        sample.error = too_large(length, limit)
        return sample
    value = images[index].as_py()
    data = value.get("bytes") if isinstance(value, dict) else value
    reference = value.get("path") if isinstance(value, dict) else None
    if data is None and reference:
        try:
            data = read_object(_beside(folder, str(reference)), None, task)
        except _Outside:
            sample.error = ("no image bytes in this row, only a reference outside the shard's "
                            f"folder ({_shown(reference)}; only paths inside it are read)")
            return sample
        except Exception as exc:  # this row's failure, unless a store's that may pass
            if protocol_of(folder) not in LOCAL and is_transient(exc):
                raise
            sample.error = ("no image bytes in this row, only a reference that could not be "
                            f"read ({_shown(reference)}: {describe(exc)})")
            return sample
    if not isinstance(data, bytes):
        sample.error = "no image bytes in this row"
    elif len(data) > limit:
        sample.error = too_large(len(data), limit)
    else:
        sample.data = data
    return sample


class _Outside(Exception):
    """A reference that is not followed."""


def _beside(folder: str, reference: str) -> str:
    """The URI of a file a row references, inside the shard's folder; _Outside for a path
    that is absolute, a URI, or leads out of the folder."""
    inside = posixpath.normpath(reference)
    if "://" in reference or inside.startswith("/") or inside in (".", "..") \
            or inside.startswith("../"):
        raise _Outside(reference)
    return posixpath.join(folder, inside)


def _shown(reference: object) -> str:
    """A reference as a row's reason shows it: credentials hidden, control characters
    escaped (a reason is one line), at most 200 characters."""
    text = redact(str(reference))[:200]
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
