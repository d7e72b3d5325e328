//! The node's teardown (`node_clean_netfilter` in testbed/node.sh) run against stand-in
//! `iptables-save`/`iptables-restore` commands on PATH: pure shell logic, no root and no
//! testbed needed. The real rules are checked end to end by `.ci/run`, which compares the
//! machine's iptables before the tests with what `testbed/down.sh` leaves.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A fresh scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("bin")).expect("create the scratch directory");
    dir
}

fn executable(path: &Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    fs::write(path, format!("#!/usr/bin/env bash\n{body}\n")).expect("write a stand-in command");
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).expect("make it executable");
}

/// What kube-proxy leaves in the filter and nat tables, with enough service rules that
/// `iptables-save` needs many writes to print it (a busy node's save is megabytes).
fn kube_proxy_save(services: usize) -> String {
    let mut save = String::from(
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
         :KUBE-FIREWALL - [0:0]\n:KUBE-FORWARD - [0:0]\n\
         -A INPUT -j KUBE-FIREWALL\n-A INPUT -s 192.0.2.7/32 -j ACCEPT\n\
         -A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD\n\
         -A KUBE-FORWARD -m conntrack --ctstate INVALID -m nfacct --nfacct-name  ct_state_invalid_dropped_pkts -j DROP\n\
         COMMIT\n*nat\n:PREROUTING ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n\
         -A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
    );
    for n in 0..services {
        save.push_str(&format!(
            ":KUBE-SVC-{n:016X} - [0:0]\n-A KUBE-SERVICES -d 10.0.{}.{}/32 -p tcp -m comment \
             --comment \"outbox/service-{n}:main cluster IP\" -m tcp --dport 9092 -j KUBE-SVC-{n:016X}\n",
            n / 256 % 256,
            n % 256
        ));
    }
    save.push_str("-A POSTROUTING -s 198.51.100.0/24 -j MASQUERADE\nCOMMIT\n");
    save
}

#[test]
fn teardown_removes_kube_proxys_rules_however_long_the_save_is() {
    let dir = scratch("teardown_removes_kube_proxys_rules");
    let bin = dir.join("bin");
    let save = kube_proxy_save(40_000);
    assert!(
        save.len() > 4 << 20,
        "the save must outgrow a pipe many times over"
    );
    fs::write(dir.join("v4.save"), &save).expect("write the save");
    executable(
        &bin.join("iptables-save"),
        &format!("cat '{}'", dir.join("v4.save").display()),
    );
    // Like the real one: what it is given becomes what the next save prints.
    executable(
        &bin.join("iptables-restore"),
        &format!(
            "tee '{}' >'{}'",
            dir.join("v4.restored").display(),
            dir.join("v4.save").display()
        ),
    );
    executable(
        &bin.join("ip6tables-save"),
        "printf '*filter\\n:INPUT ACCEPT [0:0]\\nCOMMIT\\n'",
    );
    executable(
        &bin.join("ip6tables-restore"),
        &format!("cat >'{}'", dir.join("v6.restored").display()),
    );
    executable(&bin.join("nft"), "exit 0");
    executable(&bin.join("nfacct"), "exit 0");

    let root = testbed_support::repo_root();
    let output = Command::new("bash")
        .arg("-c")
        .arg(r#". "$1/testbed/lib.sh"; . "$1/testbed/node.sh"; NODE=$2/node; node_clean_netfilter"#)
        .arg("bash")
        .arg(&root)
        .arg(&dir)
        .env(
            "PATH",
            format!(
                "{}:{}",
                bin.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .env("OUTBOX_TESTBED_STATE", dir.join("state"))
        .output()
        .expect("run bash");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "node_clean_netfilter failed: {stderr}"
    );

    let restored = fs::read_to_string(dir.join("v4.restored"))
        .unwrap_or_else(|_| panic!("iptables-restore was never called; stderr: {stderr}"));
    assert!(
        !restored.contains("KUBE-"),
        "kube-proxy's chains were restored:\n{restored}"
    );
    for kept in [
        "*filter",
        ":INPUT ACCEPT [0:0]",
        "-A INPUT -s 192.0.2.7/32 -j ACCEPT",
        "*nat",
        "-A POSTROUTING -s 198.51.100.0/24 -j MASQUERADE",
    ] {
        assert!(
            restored.contains(kept),
            "{kept:?} was not kept:\n{restored}"
        );
    }
    assert_eq!(restored.matches("COMMIT").count(), 2, "{restored}");
    assert!(
        !dir.join("v6.restored").exists(),
        "ip6tables had nothing of ours, yet was restored: {stderr}"
    );
}
