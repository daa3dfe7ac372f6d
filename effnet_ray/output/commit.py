"""One batch's rows -> one output part, committed in the actor that labelled them, so that a
crash never leaves half of one that counts and a run that lost its lease never writes into
the output."""

from __future__ import annotations

import pyarrow as pa

from effnet_ray.inputs.batch import ImageBatch
from effnet_ray.output.faults import OutputFailed
from effnet_ray.output.layout import Part
from effnet_ray.output.lease import LeaseLost, check_holder
from effnet_ray.output.rows import parquet_bytes
from effnet_ray.storage import open_fs, put_atomic, redact, retrying, write_fault


class Committer:
    """Commits one batch's rows as one part, in the actor that labelled them: a part is done
    exactly when Ray sees the call finish, and a retried call rewrites the same name.

    Before each write it checks that the output's lease still names this run (`token`): a
    worker of a killed driver cannot write into a run that started after it.
    """

    def __init__(self, output: str, token: str, storage_options: dict | None = None) -> None:
        self.output, self.token = output, token
        self._storage_options = storage_options

    def __repr__(self) -> str:  # never the storage options
        return f"Committer({self.output!r})"

    def __call__(self, batch: ImageBatch, table: pa.Table) -> Part:
        fs, folder = open_fs(self.output, self._storage_options)
        part = Part(batch.uid, batch.first, table.num_rows,
                    table.num_rows - table.column("error").null_count, batch.last)
        data = parquet_bytes(table)
        try:
            check_holder(fs, folder, self.token)
            # A retried batch whose error count came out differently leaves a second file
            # for the same rows; the scan at the end of the run (or the next start) keeps one.
            retrying(lambda: put_atomic(fs, f"{folder}/{part.name}", data), fs)
        except (LeaseLost, OutputFailed):
            raise
        except Exception as exc:
            raise OutputFailed(f"output {redact(self.output)}: {write_fault(exc)}") from exc
        return part
