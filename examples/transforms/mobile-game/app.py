"""The mobile-game transform: keep non-premium players' age, location and play time.

Input records look like
    {"user_id": 7, "age": 31, "location": "KR", "play_time_s": 3725, "premium": false, ...}
Premium players are dropped. The others become
    {"user_id": 7, "age": 31, "location": "KR", "play_time": "3725"}
(play time as text, as the prediction model expects), one JSON object per line, with the
location as the partition key for `!{partitionKeyFromLambda:location}`.
A record that is not a JSON object, or lacks a field, fails with a message saying why.
"""
import json

from wit_world import WitWorld
from wit_world.imports.types import Outcome_Dropped, Outcome_Failed, Outcome_Ok, Transformed

KEPT = ("user_id", "age", "location")


def transform(data: bytes):
    try:
        event = json.loads(data)
    except ValueError as e:
        return Outcome_Failed(f"not JSON: {e}")
    if not isinstance(event, dict):
        return Outcome_Failed("not a JSON object")
    if event.get("premium") is True:
        return Outcome_Dropped()
    missing = [k for k in KEPT + ("play_time_s",) if k not in event]
    if missing:
        return Outcome_Failed(f"missing field(s): {', '.join(missing)}")
    out = {k: event[k] for k in KEPT}
    out["play_time"] = str(event["play_time_s"])
    line = json.dumps(out, separators=(",", ":")) + "\n"
    return Outcome_Ok(Transformed(line.encode(), [("location", str(event["location"]))]))


class WitWorld(WitWorld):
    def process(self, batch):
        return [transform(record.data) for record in batch]
