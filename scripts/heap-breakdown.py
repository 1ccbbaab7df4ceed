#!/usr/bin/env python3
"""Peak heap by the deepest meshd function that allocated, from heaptrack's collapsed
stacks (heaptrack_print -F FILE --flamegraph-cost-type peak). Usage: FILE [CONNECTIONS]:
with CONNECTIONS, each line also shows bytes per connection."""
import collections
import sys


def main():
    path = sys.argv[1]
    per = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    totals = collections.Counter()
    for line in open(path):
        stack, _, cost = line.rstrip().rpartition(" ")
        if not stack:
            continue
        frames = stack.split(";")
        ours = [i for i, f in enumerate(frames) if "meshd" in f and "closure" not in f.split("::")[-1]]
        if ours:
            i = ours[-1]
            below = frames[i + 1] if i + 1 < len(frames) else ""
            key = f"{frames[i].split(' (')[0][:90]}  ->  {below.split(' (')[0][:70]}"
        else:
            key = "(outside meshd) " + " < ".join(f.split(" (")[0][:60] for f in reversed(frames[-3:]))
        totals[key] += int(cost)
    print(f"peak heap {sum(totals.values()) / 1024:.1f} KiB")
    for key, cost in totals.most_common(30):
        extra = f"{cost / per:8.0f} B/conn" if per else ""
        print(f"{cost / 1024:10.1f} KiB {extra}  {key}")


if __name__ == "__main__":
    main()
