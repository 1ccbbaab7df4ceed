//! Skipping a test whose dependency is missing: loudly, listed at the end of the test command
//! (`scripts/test.sh` prints `MESHD_SKIP_LOG`), and never in CI. Shared by both test crates.

/// Whether the env says we run in CI (where skipping is not allowed).
pub fn in_ci() -> bool {
    std::env::var("CI")
        .map(|v| !v.is_empty() && v != "false" && v != "0")
        .unwrap_or(false)
}

/// Prints a loud skip notice (outside CI) or fails (in CI). The notice is also appended to
/// the file named by `MESHD_SKIP_LOG`, which `scripts/test.sh` prints as a summary at the end.
pub fn skip_or_fail(why: &str) {
    if in_ci() {
        panic!("required test dependency missing in CI: {why}");
    }
    eprintln!("\n!!! SKIPPED: {why}");
    eprintln!("!!! run scripts/test.sh (it installs test dependencies) to run this test\n");
    if let Ok(path) = std::env::var("MESHD_SKIP_LOG") {
        use std::io::Write;
        let test = std::thread::current().name().unwrap_or("?").to_string();
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{test}: {why}");
        }
    }
}

/// Whether this process runs as root (the uid in its own status): namespace, mount and NAT
/// lab tests need it.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}
