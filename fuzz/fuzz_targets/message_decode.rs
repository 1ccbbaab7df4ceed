//! Fuzzes payload decoding for every command meshd knows: no input may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshd_actors::wire::message::KNOWN_COMMANDS;
use meshd_actors::wire::{Command, Frame, Message};

fuzz_target!(|data: &[u8]| {
    let Some((pick, payload)) = data.split_first() else {
        return;
    };
    let name = KNOWN_COMMANDS[usize::from(*pick) % KNOWN_COMMANDS.len()];
    let Some(command) = Command::new(name) else {
        return;
    };
    let _ = Message::decode(Frame::whole(command, payload.to_vec()));
});
