//! The namespace labs (tests/lab/*.sh) from a test: build one, tear it down whatever
//! happens, and check first that this machine can run it (root, and the lab's tools).

use std::process::Command;

/// A lab built by one of the scripts under its own namespace prefix (so tests may run in
/// parallel); dropped, it is torn down (`SCRIPT down`).
pub struct Lab {
    script: &'static str,
    prefix_var: &'static str,
    prefix: &'static str,
}

impl Lab {
    /// A lab of `script`, whose namespace prefix is read from the env var `prefix_var`.
    pub fn new(script: &'static str, prefix_var: &'static str, prefix: &'static str) -> Lab {
        Lab {
            script,
            prefix_var,
            prefix,
        }
    }

    /// Runs `SCRIPT ARGS...`; fails the test with the script's output if it fails.
    pub fn run(&self, args: &[&str]) {
        let out = Command::new("bash")
            .arg(self.script)
            .args(args)
            .env(self.prefix_var, self.prefix)
            .output()
            .expect("run the lab script");
        assert!(
            out.status.success(),
            "{} {args:?}: {}{}",
            self.script,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(self.script)
            .arg("down")
            .env(self.prefix_var, self.prefix)
            .output();
    }
}

/// Whether a lab can run here: root and every one of `tools` on the PATH. If not, the test
/// is skipped loudly (and fails in CI), saying that `what` needs them.
pub fn usable(what: &str, tools: &[&str]) -> bool {
    let tools_present = tools.iter().all(|t| {
        Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {t}"))
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if !super::is_root() {
        super::skip_or_fail(&format!("{what} needs root"));
        return false;
    }
    if !tools_present {
        super::skip_or_fail(&format!("{what} needs {}", tools.join(", ")));
        return false;
    }
    true
}
