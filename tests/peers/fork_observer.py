#!/usr/bin/env python3
"""Polls a node's chain tips as fork-observer (0xB10C's fork monitor) does, with
python-bitcoinrpc: getchaintips, then getblockheader of every tip, walking each branch back
by `previousblockhash` to the header it shares with the active chain. Prints the first view
that shows at least MIN_TIPS tips as JSON, or the last view after POLLS polls.

    fork_observer.py COOKIE_FILE PORT MIN_TIPS POLLS
"""

import json
import sys
import time

from bitcoinrpc.authproxy import AuthServiceProxy

cookie_file, port, min_tips, polls = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
user, password = open(cookie_file).read().strip().split(":", 1)
url = f"http://{user}:{password}@127.0.0.1:{port}"


def view():
    rpc = AuthServiceProxy(url, timeout=30)
    tips = []
    for tip in rpc.getchaintips():
        header = rpc.getblockheader(tip["hash"])
        walked = header
        for _ in range(tip["branchlen"]):
            walked = rpc.getblockheader(walked["previousblockhash"])
        tips.append({
            "status": tip["status"],
            "height": tip["height"],
            "branchlen": tip["branchlen"],
            "hash": tip["hash"],
            "header_height": header["height"],
            "confirmations": header["confirmations"],
            "fork_hash": walked["hash"],
            "fork_height": walked["height"],
            "fork_confirmations": walked["confirmations"],
        })
    return tips


last = []
for _ in range(polls):
    last = view()
    if len(last) >= min_tips:
        break
    time.sleep(0.25)
print(json.dumps(last))
