"""Which test compiles what: the suite's compile log, for work on its time.

With `DND_JAX_COMPILE_LOG=<file>` set, tests/conftest.py calls `start` in every pytest process
(the xdist workers included; not in the `scripts/` subprocesses that tests start): each XLA
compile or persistent-cache load of the process becomes one JSON line in the file, naming the
test that caused it, the program, its seconds and whether the persistent cache served it. JAX's
own events carry these (`jax.monitoring`: the backend compile's duration with the function's
name, preceded by a cache-hit event when the cache served it). Run this file to sum up a log:

  DND_JAX_COMPILE_LOG=/tmp/compiles.jsonl python -m pytest -q
  python tests/compile_log.py /tmp/compiles.jsonl
"""

from __future__ import annotations

import collections
import json
import os
import sys

_state = {"test": "(collection)", "hit": False}


def set_test(name: str) -> None:
  _state["test"] = name


def start(path: str) -> None:
  import jax  # noqa: PLC0415

  def on_event(event, **kwargs):
    if event == "/jax/compilation_cache/cache_hits":
      _state["hit"] = True

  def on_duration(event, seconds, **kwargs):
    if event != "/jax/core/compile/backend_compile_duration":
      return
    line = {"test": _state["test"], "name": kwargs.get("fun_name", "?"),
            "s": round(float(seconds), 3), "hit": _state["hit"], "pid": os.getpid()}
    _state["hit"] = False
    with open(path, "a") as f:  # one short line per write: the workers' lines do not interleave
      f.write(json.dumps(line) + "\n")

  jax.monitoring.register_event_listener(on_event)
  jax.monitoring.register_event_duration_secs_listener(on_duration)


def summary(path: str, top: int = 25) -> str:
  rows = [json.loads(line) for line in open(path)]
  missed = [r for r in rows if not r["hit"]]
  lines = [f"{len(rows)} compiles, {len(rows) - len(missed)} from the persistent cache; "
           f"{sum(r['s'] for r in missed):.1f} s compiling, "
           f"{sum(r['s'] for r in rows if r['hit']):.1f} s loading from the cache",
           "", "seconds compiling (programs) by test:"]
  by_test, count = collections.defaultdict(float), collections.Counter()
  for r in missed:
    by_test[r["test"]] += r["s"]
    count[r["test"]] += 1
  for test, seconds in sorted(by_test.items(), key=lambda x: -x[1])[:top]:
    lines.append(f"  {seconds:7.1f} s ({count[test]:3d})  {test}")
  by_name = collections.Counter()
  for r in missed:
    by_name[r["name"]] += r["s"]
  lines += ["", "seconds compiling by program name:"]
  lines += [f"  {s:7.1f} s  {name}" for name, s in by_name.most_common(10)]
  return "\n".join(lines)


if __name__ == "__main__":
  print(summary(sys.argv[1]))
