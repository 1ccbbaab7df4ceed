//! Transaction download and relay over real loopback sockets, in the spirit of Core's
//! p2p_tx_download.py: every announcer is remembered and the next is asked after a
//! `notfound`, outbound peers are asked before inbound ones, and (`--tx-relay vouched`) only
//! transactions a validating peer vouched for are announced onwards.

mod common;

use std::time::Duration;

use bitcoin::p2p::message::NetworkMessage;
use bitcoin::p2p::message_blockdata::Inventory;
use bitcoin::{ScriptBuf, Transaction, Txid, Witness};
use common::{config, handshaked, AsyncPeer};
use meshd_actors::config::{NodeConfig, TxRelay};
use meshd_actors::events::{EventKind, NodeEvent};
use meshd_actors::node::Node;

fn tx(n: u8) -> Transaction {
    common::made_up_spend(n)
}

fn cfg(dir: &std::path::Path) -> NodeConfig {
    let mut c = config(dir);
    c.trickle = false;
    c.slots.outbound = 0;
    // The raw test peers speak v1.
    c.v2transport = false;
    c
}

/// The txids `m` asks for, if it is a `getdata`.
fn asked(m: &NetworkMessage) -> Option<Vec<Txid>> {
    match m {
        NetworkMessage::GetData(items) => Some(
            items
                .iter()
                .filter_map(|i| match i {
                    Inventory::Transaction(t) | Inventory::WitnessTransaction(t) => Some(*t),
                    _ => None,
                })
                .collect(),
        ),
        _ => None,
    }
}

/// Whether `m` announces `txid`.
fn announces(m: &NetworkMessage, txid: Txid) -> Option<()> {
    match m {
        NetworkMessage::Inv(items) => items
            .iter()
            .any(|i| matches!(i, Inventory::Transaction(t) if *t == txid))
            .then_some(()),
        _ => None,
    }
}

/// A node that dialled a raw test peer (its outbound, full-relay peer), and that peer.
async fn with_outbound_peer(dir: &std::path::Path) -> (Node, AsyncPeer) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut c = cfg(dir);
    c.slots.outbound = 1;
    c.connect = vec![listener.local_addr().unwrap()];
    let node = Node::start(c).await.unwrap();
    let outbound = AsyncPeer::accept(&listener).await;
    (node, outbound)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_notfound_the_next_announcer_is_asked() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(cfg(dir.path())).await.unwrap();
    let addr = node.listen_addrs()[0];
    let mut a = handshaked(addr).await;
    let mut b = handshaked(addr).await;
    common::wait_sync_peers(&node, 2).await;
    let t = tx(1);
    let txid = t.compute_txid();
    a.send(NetworkMessage::Inv(vec![Inventory::Transaction(txid)]))
        .await;
    b.send(NetworkMessage::Inv(vec![Inventory::Transaction(txid)]))
        .await;
    // One of the two (both inbound, so after Core's 2 s delay) is asked; not both.
    let first = tokio::select! {
        r = a.wait_for(Duration::from_secs(5), |m| asked(m).filter(|v| v.contains(&txid))) => r.map(|_| 'a'),
        r = b.wait_for(Duration::from_secs(5), |m| asked(m).filter(|v| v.contains(&txid))) => r.map(|_| 'b'),
    }
    .expect("one announcer asked");
    let (asked_peer, other) = if first == 'a' {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    asked_peer
        .send(NetworkMessage::NotFound(vec![Inventory::Transaction(txid)]))
        .await;
    // The other announcer is asked now (before: a notfound dropped the transaction).
    assert!(
        other
            .wait_for(Duration::from_secs(5), |m| asked(m)
                .filter(|v| v.contains(&txid)))
            .await
            .is_some(),
        "the second announcer was never asked"
    );
    let mut events = node.subscribe_to(&[EventKind::TxReceived]);
    other.send(NetworkMessage::Tx(t)).await;
    let got = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .expect("pooled")
        .expect("event");
    assert!(
        matches!(got.event, NodeEvent::TxReceived { txid: ref s, .. } if *s == txid.to_string())
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbound_announcer_is_asked_before_an_earlier_inbound_one() {
    let dir = tempfile::tempdir().unwrap();
    let (node, mut outbound) = with_outbound_peer(dir.path()).await;
    let mut inbound = handshaked(node.listen_addrs()[0]).await;
    common::wait_sync_peers(&node, 2).await;
    let txid = tx(2).compute_txid();
    inbound
        .send(NetworkMessage::Inv(vec![Inventory::Transaction(txid)]))
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    outbound
        .send(NetworkMessage::Inv(vec![Inventory::Transaction(txid)]))
        .await;
    assert!(
        outbound
            .wait_for(Duration::from_secs(3), |m| asked(m)
                .filter(|v| v.contains(&txid)))
            .await
            .is_some(),
        "the outbound announcer was not asked"
    );
    // The inbound one is not asked while the outbound request is in flight.
    assert!(
        inbound
            .wait_for(Duration::from_secs(3), |m| asked(m)
                .filter(|v| v.contains(&txid)))
            .await
            .is_none(),
        "the inbound announcer was asked too"
    );
    node.shutdown().await;
}

/// An inbound peer's transaction is pooled and published but not announced; once an
/// outbound (full-relay) peer announces it too, it is vouched for and announced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_vouched_transactions_are_announced() {
    let dir = tempfile::tempdir().unwrap();
    let (node, mut outbound) = with_outbound_peer(dir.path()).await;
    let addr = node.listen_addrs()[0];
    let mut sender = handshaked(addr).await;
    let mut watcher = handshaked(addr).await;
    common::wait_sync_peers(&node, 3).await;
    let mut events = node.subscribe_to(&[EventKind::TxReceived]);
    // Outputs above its (made-up) input: a validating node would reject it; meshd cannot tell.
    let t = tx(3);
    let txid = t.compute_txid();
    sender.send(NetworkMessage::Tx(t)).await;
    tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .expect("pooled and published")
        .expect("event");
    assert!(
        watcher
            .wait_for(Duration::from_millis(1500), |m| announces(m, txid))
            .await
            .is_none(),
        "an inbound peer's transaction was announced (before: every checked one was)"
    );
    assert_eq!(node.sync_status().tx_pool, 1);
    // Not yet vouched for: no eviction credit (Core credits only what its mempool took;
    // before, every pooled transaction protected its sender).
    let sender_addr = sender.stream.local_addr().unwrap();
    let credit = |node: &Node| {
        node.peers()
            .into_iter()
            .find(|p| p.addr == sender_addr)
            .expect("the sender's row")
            .last_tx_at
    };
    assert!(
        credit(&node).is_none(),
        "an unvouched transaction protected its sender"
    );
    outbound
        .send(NetworkMessage::Inv(vec![Inventory::Transaction(txid)]))
        .await;
    // A txid names no witness, so the node asks the outbound peer for its copy; the copy
    // matches ours, which is then vouched for and relayed.
    assert!(
        outbound
            .wait_for(Duration::from_secs(5), |m| asked(m)
                .filter(|v| v.contains(&txid)))
            .await
            .is_some(),
        "the outbound announcer was not asked for its copy"
    );
    outbound.send(NetworkMessage::Tx(tx(3))).await;
    assert!(
        watcher
            .wait_for(Duration::from_secs(5), |m| announces(m, txid))
            .await
            .is_some(),
        "announced by an outbound peer, it is vouched for and relayed"
    );
    // Vouched for now: its first sender is credited.
    assert!(
        credit(&node).is_some(),
        "the vouched transaction's sender was not credited"
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tx_relay_all_announces_and_none_never_does() {
    for (mode, expect) in [(TxRelay::All, true), (TxRelay::None, false)] {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg(dir.path());
        c.tx_relay = mode;
        let node = Node::start(c).await.unwrap();
        let addr = node.listen_addrs()[0];
        let mut sender = handshaked(addr).await;
        let mut watcher = handshaked(addr).await;
        common::wait_sync_peers(&node, 2).await;
        let t = tx(4);
        let txid = t.compute_txid();
        sender.send(NetworkMessage::Tx(t)).await;
        let seen = watcher
            .wait_for(Duration::from_secs(2), |m| announces(m, txid))
            .await
            .is_some();
        assert_eq!(seen, expect, "--tx-relay {}", mode.as_str());
        // Served on request either way.
        watcher
            .send(NetworkMessage::GetData(vec![Inventory::Transaction(txid)]))
            .await;
        let served = watcher
            .wait_for(Duration::from_secs(3), |m| match m {
                NetworkMessage::Tx(t) if t.compute_txid() == txid => Some(()),
                _ => None,
            })
            .await;
        assert!(
            served.is_some(),
            "pooled transaction served ({})",
            mode.as_str()
        );
        node.shutdown().await;
    }
}

/// A copy malleated in its witness (same txid, another wtxid) that reached the pool first is
/// not vouched for by the honest copy's outbound sender: the honest copy replaces it, and it
/// alone is announced and served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malleated_copy_is_replaced_by_the_vouched_one_and_never_relayed() {
    let dir = tempfile::tempdir().unwrap();
    let (node, mut outbound) = with_outbound_peer(dir.path()).await;
    let addr = node.listen_addrs()[0];
    let mut attacker = handshaked(addr).await;
    let mut watcher = handshaked(addr).await;
    common::wait_sync_peers(&node, 3).await;
    let mut events = node.subscribe_to(&[EventKind::TxReceived]);
    let mut honest = tx(6);
    honest.input[0].witness = Witness::from_slice(&[vec![0x30; 71], vec![0x02; 33]]);
    let mut malleated = honest.clone();
    malleated.input[0].witness = Witness::from_slice(&[vec![0x99; 71], vec![0x02; 33]]);
    let txid = honest.compute_txid();
    assert_eq!(malleated.compute_txid(), txid);
    assert_ne!(malleated.compute_wtxid(), honest.compute_wtxid());
    attacker.send(NetworkMessage::Tx(malleated)).await;
    tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .expect("the malleated copy pooled")
        .expect("event");
    outbound.send(NetworkMessage::Tx(honest.clone())).await;
    assert!(
        watcher
            .wait_for(Duration::from_secs(5), |m| announces(m, txid))
            .await
            .is_some(),
        "the vouched copy was not relayed"
    );
    watcher
        .send(NetworkMessage::GetData(vec![
            Inventory::WitnessTransaction(txid),
        ]))
        .await;
    let served = watcher
        .wait_for(Duration::from_secs(3), |m| match m {
            NetworkMessage::Tx(t) if t.compute_txid() == txid => Some(t.clone()),
            _ => None,
        })
        .await
        .expect("served");
    assert_eq!(served, honest, "the malleated copy was served");
    node.shutdown().await;
}

/// Core's recent rejects (AlreadyHaveTx): a transaction refused from one announcer is not
/// fetched from the next until the tip changes. Before, every announcer was asked in turn,
/// so each copy of an invalid transaction cost a download and a check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_transaction_is_not_fetched_again_until_the_tip_changes() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(cfg(dir.path())).await.unwrap();
    let addr = node.listen_addrs()[0];
    let mut a = handshaked(addr).await;
    let mut b = handshaked(addr).await;
    common::wait_sync_peers(&node, 2).await;
    // No outputs: refused by the context-free checks (Core's bad-txns-vout-empty).
    let mut bad = tx(9);
    bad.output.clear();
    let txid = bad.compute_txid();
    a.send(NetworkMessage::Inv(vec![Inventory::Transaction(txid)]))
        .await;
    assert!(
        a.wait_for(Duration::from_secs(5), |m| asked(m)
            .filter(|v| v.contains(&txid)))
            .await
            .is_some(),
        "the first announcer was never asked"
    );
    a.send(NetworkMessage::Tx(bad)).await;
    // The refusal has landed once its sender is dropped (100 points: consensus-invalid).
    assert!(
        a.closed_within(Duration::from_secs(5)).await,
        "the sender was kept"
    );
    b.send(NetworkMessage::Inv(vec![Inventory::Transaction(txid)]))
        .await;
    // An inbound announcer is asked after 2 s (Core's NONPREF_PEER_TX_DELAY): wait past it.
    assert!(
        b.wait_for(Duration::from_secs(4), |m| asked(m)
            .filter(|v| v.contains(&txid)))
            .await
            .is_none(),
        "a transaction refused a moment ago was fetched again from the next announcer"
    );
    // A new tip resets the filter (a refusal may not hold on it): announced again, asked.
    node.generate(1).await.unwrap();
    b.send(NetworkMessage::Inv(vec![Inventory::Transaction(txid)]))
        .await;
    assert!(
        b.wait_for(Duration::from_secs(5), |m| asked(m)
            .filter(|v| v.contains(&txid)))
            .await
            .is_some(),
        "after a new tip the transaction was never asked for again"
    );
    node.shutdown().await;
}

/// Core's ReceivedResponse: a transaction from a peer answers that peer's announcement
/// only. An inbound peer announces a transaction and, asked first, answers with a copy
/// whose witness is junk (same txid); an outbound peer announced it meanwhile and waits its
/// turn. Its announcement must survive the junk copy: its honest copy is then fetched,
/// vouched for, replaces the junk one and is relayed. Before, any copy received forgot every
/// announcer of its txid, so the junk copy stayed, unvouched, and the honest one was never
/// fetched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_junk_witness_answer_does_not_erase_the_other_announcers() {
    let dir = tempfile::tempdir().unwrap();
    let (node, mut outbound) = with_outbound_peer(dir.path()).await;
    let addr = node.listen_addrs()[0];
    let mut junk_sender = handshaked(addr).await;
    let mut watcher = handshaked(addr).await;
    common::wait_sync_peers(&node, 3).await;
    let honest = tx(12);
    let txid = honest.compute_txid();
    let mut junk = honest.clone();
    junk.input[0].witness = Witness::from_slice(&[vec![0xee; 80]]);
    assert_eq!(junk.compute_txid(), txid);
    junk_sender
        .send(NetworkMessage::Inv(vec![Inventory::Transaction(txid)]))
        .await;
    assert!(
        junk_sender
            .wait_for(Duration::from_secs(5), |m| asked(m)
                .filter(|v| v.contains(&txid)))
            .await
            .is_some(),
        "the first announcer was never asked"
    );
    // Announced by the outbound peer while the first request is in flight: it waits.
    outbound
        .send(NetworkMessage::Inv(vec![Inventory::Transaction(txid)]))
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    junk_sender.send(NetworkMessage::Tx(junk)).await;
    assert!(
        outbound
            .wait_for(Duration::from_secs(5), |m| asked(m)
                .filter(|v| v.contains(&txid)))
            .await
            .is_some(),
        "the outbound announcer was never asked for its copy"
    );
    outbound.send(NetworkMessage::Tx(honest)).await;
    assert!(
        watcher
            .wait_for(Duration::from_secs(5), |m| announces(m, txid))
            .await
            .is_some(),
        "the honest, vouched copy was not relayed"
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_honest_one_and_a_half_megabyte_bsv_transaction_is_taken_free() {
    // BSV's policy allows 10 MB transactions: a 1.5 MB one is honest there (before #24 it
    // cost its sender 100 points under BTC's 1 MB rule, and a ban).
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    c.network = meshd_actors::network::NetworkId::BsvRegtest;
    let node = Node::start(c).await.unwrap();
    let addr = node.listen_addrs()[0];
    let mut peer = AsyncPeer::connect_on(addr, meshd_actors::network::NetworkId::BsvRegtest)
        .await
        .unwrap();
    assert!(peer.handshake().await);
    common::wait_sync_peers(&node, 1).await;
    let mut big = tx(7);
    big.output[0].script_pubkey = ScriptBuf::from_bytes(vec![0x6a; 1_500_000]);
    let txid = big.compute_txid();
    let mut events = node.subscribe_to(&[EventKind::TxReceived]);
    peer.send(NetworkMessage::Inv(vec![Inventory::Transaction(txid)]))
        .await;
    assert!(
        peer.wait_for(Duration::from_secs(10), |m| asked(m)
            .filter(|v| v.contains(&txid)))
            .await
            .is_some(),
        "the announcer was never asked"
    );
    peer.send(NetworkMessage::Tx(big)).await;
    let got = tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .expect("pooled")
        .expect("event");
    assert!(
        matches!(got.event, NodeEvent::TxReceived { txid: ref s, .. } if *s == txid.to_string())
    );
    let info = node.peers();
    assert_eq!(info.len(), 1, "the sender is still connected");
    assert_eq!(info[0].misbehavior, 0, "and owes nothing");
    node.shutdown().await;
}
