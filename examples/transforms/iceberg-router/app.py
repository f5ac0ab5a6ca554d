"""The iceberg-router transform: sends each game event to the Iceberg table of its kind.

Input records look like
    {"id": 7, "event": "sessions", "length_s": 310}
and leave unchanged (minus `op`), with the metadata an Iceberg stream routes by:
`destinationTableName` from `event` and, when the record has one, `operation` from `op`.
A record without `event` carries no table name, so it goes to the table a MetadataExtraction
query names, or else to the stream's first table. A record that is not a JSON object fails.
"""
import json

from wit_world import WitWorld
from wit_world.imports.types import Outcome_Failed, Outcome_Ok, Transformed


def transform(data: bytes):
    try:
        event = json.loads(data)
    except ValueError as e:
        return Outcome_Failed(f"not JSON: {e}")
    if not isinstance(event, dict):
        return Outcome_Failed("not a JSON object")
    keys = []
    if isinstance(event.get("event"), str):
        keys.append(("destinationTableName", event["event"]))
    op = event.pop("op", None)
    if isinstance(op, str):
        keys.append(("operation", op))
    line = json.dumps(event, separators=(",", ":")) + "\n"
    return Outcome_Ok(Transformed(line.encode(), keys))


class WitWorld(WitWorld):
    def process(self, batch):
        return [transform(record.data) for record in batch]
