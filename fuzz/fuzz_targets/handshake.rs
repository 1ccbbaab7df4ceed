//! Fuzzes the handshake state machine with arbitrary message sequences (every command meshd
//! knows, arbitrary payloads): no input may panic, and the handshake completes only after the
//! peer's `version` and `verack` both arrived.
#![no_main]

use std::time::{Duration, Instant};

use bitcoin::p2p::message::NetworkMessage;
use bitcoin::p2p::ServiceFlags;
use libfuzzer_sys::fuzz_target;
use meshd_actors::peer::{Direction, Handshake, HandshakePolicy};
use meshd_actors::wire::message::KNOWN_COMMANDS;
use meshd_actors::wire::{Command, Frame, Message};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, mut rest)) = data.split_first() else {
        return;
    };
    let policy = HandshakePolicy {
        protocol_version: 70016,
        min_protocol_version: 70001,
        user_agent: "/fuzz/".into(),
        services: ServiceFlags::NETWORK,
        required_services: ServiceFlags::NETWORK,
        banned_user_agents: vec!["evil".into()],
        timeout: Duration::from_secs(60),
        relay: true,
        start_height: 0,
        overlay: None,
    };
    let direction = if mode & 1 == 0 {
        Direction::Inbound
    } else {
        Direction::Outbound
    };
    let mut hs = Handshake::new(
        direction,
        mode & 2 == 2,
        7,
        "203.0.113.1:8333".parse().unwrap(),
        None,
        Instant::now(),
        policy.timeout,
    );
    let _ = hs.start(&policy, 1_700_000_000);
    let (mut got_version, mut got_verack) = (false, false);
    // Each message: command pick (1), payload length (1), payload.
    while let [pick, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (payload, next) = tail.split_at(n);
        rest = next;
        let name = KNOWN_COMMANDS[usize::from(*pick) % KNOWN_COMMANDS.len()];
        let Some(command) = Command::new(name) else {
            return;
        };
        let Ok(msg) = Message::decode(Frame::whole(command, payload.to_vec())) else {
            continue;
        };
        match &msg {
            Message::Network(NetworkMessage::Version(_)) => got_version = true,
            Message::Network(NetworkMessage::Verack) => got_verack = true,
            _ => {}
        }
        match hs.on_message(&msg, &policy, 1_700_000_000, &|n| n == 7) {
            Err(_) => return,
            Ok(_) if hs.is_complete() => {
                assert!(
                    got_version && got_verack,
                    "complete without version and verack"
                );
                return;
            }
            Ok(_) => {}
        }
    }
});
