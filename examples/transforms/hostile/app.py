"""A deliberately badly behaved transform, for spillway's sandbox tests.

Each record names what to do; the first record of a batch that asks for misbehaviour decides
the fate of the whole call:
    loop   spin forever                      (the time budget stops it)
    sleep  sleep for an hour in the host     (the time budget stops that too)
    oom    allocate far past the memory cap  (the memory cap stops it)
    trap   raise an exception                (the call traps)
    count  return no outcomes at all         (wrong outcome count)
    read   print to stdout and stderr, try to read /etc/passwd and list the environment; the
           record fails with what happened (the sandbox grants no files and no environment)
    fail   fail this record on purpose
    drop   drop this record
anything else is delivered unchanged.
"""
import os
import sys
import time

from wit_world import WitWorld
from wit_world.imports.types import Outcome_Dropped, Outcome_Failed, Outcome_Ok, Transformed


def sandbox_probe():
    print("hostile: probing the sandbox")
    print("hostile: this goes to stderr", file=sys.stderr)
    try:
        with open("/etc/passwd", "rb") as f:
            return Outcome_Ok(Transformed(b"ESCAPED " + f.read(), []))
    except OSError as e:
        found = f"open failed: {e}"
    env = sorted(os.environ)
    return Outcome_Failed(f"{found}; environment variables: {len(env)}")


class WitWorld(WitWorld):
    def process(self, batch):
        out = []
        for record in batch:
            what = record.data.strip()
            if what == b"loop":
                while True:
                    pass
            elif what == b"sleep":
                time.sleep(3600)
            elif what == b"oom":
                hoard = []
                while True:
                    hoard.append(bytearray(16 * 1024 * 1024))
            elif what == b"trap":
                raise RuntimeError("hostile transform raised on purpose")
            elif what == b"count":
                return []
            elif what == b"read":
                out.append(sandbox_probe())
            elif what == b"fail":
                out.append(Outcome_Failed("failed on purpose"))
            elif what == b"drop":
                out.append(Outcome_Dropped())
            else:
                out.append(Outcome_Ok(Transformed(record.data, [])))
        return out
