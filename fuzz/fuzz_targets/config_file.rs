//! Fuzzes the daemon's config parser: arbitrary text as a `--config` file (TOML into the file
//! schema, then merged over the defaults into a node configuration), and the value parsers
//! for sizes, durations, service bits and endpoints. Every input gives a configuration or a
//! typed error, never a panic. The daemon crate has no library target, so its modules are
//! compiled into this target from their source files.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../src/cli.rs"]
mod cli;
#[allow(dead_code)]
#[path = "../../src/settings.rs"]
mod settings;
#[allow(dead_code)]
#[path = "../../src/nodefile.rs"]
mod nodefile;
#[allow(dead_code)]
#[path = "../../src/rpc_auth.rs"]
mod rpc_auth;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(file) = settings::parse_file(text) {
        let args = cli::RunArgs::default();
        let _ = settings::resolve_with(&args, file);
    }
    let _ = settings::parse_bytes("fuzz", text);
    let _ = settings::parse_duration("fuzz", text);
    let _ = settings::parse_bits("fuzz", text);
    let _ = settings::parse_endpoint("fuzz", text, 8333);
});
