#!/usr/bin/env python3
"""Drives meshd's JSON-RPC with python-bitcoinrpc, the client written for bitcoind, the way
an operator's scripts do, and prints what every call answered as one JSON object (the Rust
test checks it). Errors are recorded as {"error": {"code": ..., "message": ...}}.

    rpc_client.py COOKIE_FILE PORT PEER_ADDR ADDRESS

PEER_ADDR is another node's P2P address (added with addnode); ADDRESS a regtest address
to mine to. The test has one inbound peer (a transaction feeder) connected before this
starts. Every wait is bounded.
"""

import decimal
import json
import sys
import time

from bitcoinrpc.authproxy import AuthServiceProxy, JSONRPCException

cookie_file, port, peer, address = sys.argv[1:5]
user, password = open(cookie_file).read().strip().split(":", 1)
url = f"http://{user}:{password}@127.0.0.1:{port}"
out = {}


def rpc():
    # A fresh connection per call: the proxy keeps one HTTP connection, which a stopped
    # server or a 500 can leave unusable.
    return AuthServiceProxy(url, timeout=30)


def call(name, method, *params):
    try:
        out[name] = getattr(rpc(), method)(*params)
    except JSONRPCException as e:
        out[name] = {"error": e.error}
    return out[name]


def wait_for(what, pred, secs=20):
    deadline = time.time() + secs
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(0.2)
    out.setdefault("timeouts", []).append(what)
    return False


def added_connected():
    return any(a["connected"] for a in rpc().getaddednodeinfo())


def peer_connected():
    return any(p["addr"] == peer for p in rpc().getpeerinfo())


call("addnode", "addnode", peer, "add")
wait_for("the added peer connected", added_connected)
call("addnode_again", "addnode", peer, "add")
call("getaddednodeinfo", "getaddednodeinfo")
call("getaddednodeinfo_one", "getaddednodeinfo", peer)
call("getaddednodeinfo_unknown", "getaddednodeinfo", "203.0.113.9:18444")
call("ping", "ping")
wait_for("a ping time", lambda: all("pingtime" in p for p in rpc().getpeerinfo()))
call("getpeerinfo", "getpeerinfo")
call("getconnectioncount", "getconnectioncount")
call("getnetworkinfo", "getnetworkinfo")

hashes = call("generatetoaddress", "generatetoaddress", 5, address)
call("getblockcount", "getblockcount")
call("getbestblockhash", "getbestblockhash")
call("getblockhash_5", "getblockhash", 5)
call("getblockhash_out_of_range", "getblockhash", 6)
call("getblockhash_negative", "getblockhash", -1)
if isinstance(hashes, list) and hashes:
    call("getblockheader", "getblockheader", hashes[-1])
    call("getblockheader_first", "getblockheader", hashes[0])
    call("getblockheader_hex", "getblockheader", hashes[-1], False)
    call("getblock_0", "getblock", hashes[-1], 0)
    call("getblock_1", "getblock", hashes[-1])
    call("getblock_2", "getblock", hashes[-1], 2)
    block = out["getblock_1"]
    if isinstance(block, dict) and block.get("tx"):
        call("getrawtransaction_in_block", "getrawtransaction", block["tx"][0], True, hashes[-1])
call("getblockheader_unknown", "getblockheader", "00" * 32)
call("getblockheader_bad", "getblockheader", "xyz")
call("getblock_unknown", "getblock", "11" * 32)
call("getchaintips", "getchaintips")
call("getblockchaininfo", "getblockchaininfo")
call("generatetoaddress_bad_address", "generatetoaddress", 1, "not-an-address")

# The pool, fed by the test's transaction peer.
wait_for("pooled transactions", lambda: len(rpc().getrawmempool()) > 0)
pool = call("getrawmempool", "getrawmempool")
call("getrawmempool_verbose", "getrawmempool", True)
if pool:
    call("getrawtransaction", "getrawtransaction", pool[0])
    call("getrawtransaction_verbose", "getrawtransaction", pool[0], True)
call("getrawtransaction_unknown", "getrawtransaction", "22" * 32)

call("setban", "setban", "203.0.113.7", "add", 3600)
call("setban_again", "setban", "203.0.113.7", "add")
call("setban_inside_subnet", "setban", "198.51.100.0/24", "add", 2000000000, True)
call("listbanned", "listbanned")
call("setban_remove", "setban", "203.0.113.7", "remove")
call("setban_remove_again", "setban", "203.0.113.7", "remove")
call("setban_bad", "setban", "not-an-ip", "add")
call("clearbanned", "clearbanned")
call("listbanned_after_clear", "listbanned")

call("getnettotals", "getnettotals")
call("uptime", "uptime")
call("unknown_method", "getwalletinfo")
call("wrong_arity", "getblockhash")
call("wrong_type", "getblockhash", "five")

call("addnode_remove", "addnode", peer, "remove")
call("addnode_remove_again", "addnode", peer, "remove")
call("getaddednodeinfo_after_remove", "getaddednodeinfo")
peers = rpc().getpeerinfo()
for p in peers:
    if p["addr"] == peer:
        call("disconnectnode", "disconnectnode", "", p["id"])
wait_for("the removed peer gone", lambda: not peer_connected())
# Not dialled again as a manual peer once removed (the address book may still pick it for
# an automatic outbound slot, as Core's addrman does).
time.sleep(2)
out["types_after_remove"] = [p["connection_type"] for p in rpc().getpeerinfo() if p["addr"] == peer]
call("disconnectnode_unknown", "disconnectnode", "203.0.113.9:18444")
call("stop", "stop")


def plain(v):
    if isinstance(v, decimal.Decimal):
        return float(v)
    raise TypeError(type(v))


print(json.dumps(out, default=plain))
