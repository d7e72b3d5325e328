//! Processes a test started: signals to them.

use std::process::Command;

/// Sends signal `name` (`TERM`, `KILL`, `STOP`, `CONT`, ...) to `pid`; whether it was
/// delivered.
pub fn signal(name: &str, pid: u32) -> bool {
    Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .is_ok_and(|s| s.success())
}
