"""Reads an Iceberg table the way a user would: pyiceberg on the same SQL catalog.

Usage: iceberg_read.py CATALOG_URI WAREHOUSE TABLE [S3_ENDPOINT]
Prints one JSON object: rows (sorted by id), snapshots (their spillway.batch), files, the
number of metadata versions, and,
for local tables, duckdb_rows (DuckDB reading the data files pyiceberg lists).
"""
import json
import os
import sys

from pyiceberg.catalog.sql import SqlCatalog

uri, warehouse, table_name = sys.argv[1:4]
props = {"uri": uri, "warehouse": warehouse}
if len(sys.argv) > 4:
    props.update({
        "s3.endpoint": sys.argv[4],
        "s3.access-key-id": "spillway-test",
        "s3.secret-access-key": "spillway-test-secret",
        "s3.region": "us-east-1",
    })
catalog = SqlCatalog(os.environ.get("CATALOG_NAME", "default"), **props)
table = catalog.load_table(table_name)
rows = table.scan().to_arrow().to_pylist()
for r in rows:
    for k, v in list(r.items()):
        if hasattr(v, "isoformat"):
            r[k] = v.isoformat()
rows.sort(key=lambda r: (r.get("id") is None, r.get("id")))
files = [t.file.file_path for t in table.scan().plan_files()]
out = {
    "rows": rows,
    "columns": [f.name for f in table.schema().fields],
    "partition_fields": [str(f.transform) + ":" + f.name for f in table.spec().fields],
    "snapshots": [s.summary.additional_properties.get("spillway.batch") for s in table.snapshots()],
    "files": files,
    "operations": [s.summary.operation.value for s in table.snapshots()],
    # Metadata files the table has had: one at creation, then one per commit.
    "metadata_versions": len(table.metadata.metadata_log) + 1,
}
if files and all(f.startswith("file://") for f in files):
    import duckdb
    paths = [f[len("file://"):] for f in files]
    out["duckdb_rows"] = duckdb.sql(
        "select count(*) from read_parquet(?)", params=[paths]
    ).fetchone()[0]
print(json.dumps(out, default=str))
