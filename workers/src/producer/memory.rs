//! The memory this process may use: its cgroup's limit (v1 or v2), so that buffers are
//! sized from the pod's memory limit instead of fixed numbers that a small limit
//! cannot hold.

use std::path::{Path, PathBuf};

/// Limits at or above this are "no limit" (cgroup v1 writes 2^63 rounded to pages).
const UNLIMITED: u64 = 1 << 60;

/// The smallest memory limit of this process's cgroup and its ancestors, in bytes;
/// `None` when no limit is set or the cgroup files cannot be read.
pub fn cgroup_limit() -> Option<u64> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    limit_from(&own, Path::new("/sys/fs/cgroup"))
}

/// [`cgroup_limit`] over a `/proc/self/cgroup` text and a cgroup mount point.
fn limit_from(proc_cgroup: &str, root: &Path) -> Option<u64> {
    let (dir, file) = match memory_path_v1(proc_cgroup) {
        Some(path) => (
            root.join("memory").join(path.trim_start_matches('/')),
            "memory.limit_in_bytes",
        ),
        None => {
            let path = proc_cgroup.lines().find_map(|l| l.strip_prefix("0::"))?;
            (root.join(path.trim_start_matches('/')), "memory.max")
        }
    };
    // In a container the hierarchy is usually mounted at the container's own cgroup,
    // so the path named in /proc/self/cgroup may not exist: the mount root is then
    // ours. Walk up to the mount root, keeping the smallest limit.
    let top = if file == "memory.max" {
        root.to_path_buf()
    } else {
        root.join("memory")
    };
    let mut smallest: Option<u64> = None;
    let mut at: Option<PathBuf> = Some(dir);
    while let Some(d) = at {
        if let Some(limit) = read_limit(&d.join(file)) {
            smallest = Some(smallest.map_or(limit, |s| s.min(limit)));
        }
        if d == top {
            break;
        }
        at = d
            .parent()
            .filter(|p| p.starts_with(&top))
            .map(Path::to_path_buf);
    }
    smallest
}

/// The memory controller's path in a cgroup v1 `/proc/self/cgroup`.
fn memory_path_v1(proc_cgroup: &str) -> Option<&str> {
    proc_cgroup.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers
            .split(',')
            .any(|c| c == "memory")
            .then_some(path)
    })
}

fn read_limit(file: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(file).ok()?;
    let limit: u64 = text.trim().parse().ok()?; // "max" (v2, no limit) does not parse
    (limit < UNLIMITED).then_some(limit)
}

/// `share` of `limit` (1/`divisor`), within `floor..=ceiling`; `ceiling` without a limit.
pub fn share_of(limit: Option<u64>, divisor: u64, floor: u64, ceiling: u64) -> u64 {
    limit.map_or(ceiling, |l| (l / divisor.max(1)).clamp(floor, ceiling))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cgroup_tree(files: &[(&str, &str)]) -> tempdir::Dir {
        let dir = tempdir::Dir::new();
        for (path, content) in files {
            let file = dir.0.join(path);
            std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
            std::fs::write(file, content).expect("write");
        }
        dir
    }

    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                let dir = std::env::temp_dir().join(format!(
                    "outbox-memory-test-{}-{:?}",
                    std::process::id(),
                    std::thread::current().id()
                ));
                let _ = std::fs::remove_dir_all(&dir);
                std::fs::create_dir_all(&dir).expect("temp dir");
                Dir(dir)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn a_v1_limit_is_read_at_the_path_named_for_the_memory_controller() {
        let tree = cgroup_tree(&[
            ("memory/memory.limit_in_bytes", "9223372036854771712\n"),
            (
                "memory/kubepods/pod1/c1/memory.limit_in_bytes",
                "268435456\n",
            ),
        ]);
        let proc = "9:name=systemd:/\n4:memory:/kubepods/pod1/c1\n0::/\n";
        assert_eq!(limit_from(proc, &tree.0), Some(256 << 20));
    }

    #[test]
    fn inside_a_container_the_mount_root_is_the_own_cgroup() {
        let tree = cgroup_tree(&[("memory/memory.limit_in_bytes", "134217728\n")]);
        let proc = "4:memory:/kubepods/pod1/c1\n";
        assert_eq!(limit_from(proc, &tree.0), Some(128 << 20));
    }

    #[test]
    fn the_smallest_limit_of_the_ancestors_holds() {
        let tree = cgroup_tree(&[
            ("memory.max", "max\n"),
            ("a/memory.max", "104857600\n"),
            ("a/b/memory.max", "max\n"),
        ]);
        assert_eq!(limit_from("0::/a/b\n", &tree.0), Some(100 << 20));
    }

    #[test]
    fn no_limit_anywhere_is_none() {
        let tree = cgroup_tree(&[("memory.max", "max\n"), ("a/memory.max", "max\n")]);
        assert_eq!(limit_from("0::/a\n", &tree.0), None);
    }

    #[test]
    fn shares_are_clamped_and_default_to_the_ceiling() {
        assert_eq!(share_of(Some(256 << 20), 4, 4 << 20, 64 << 20), 64 << 20);
        assert_eq!(share_of(Some(64 << 20), 4, 4 << 20, 64 << 20), 16 << 20);
        assert_eq!(share_of(Some(8 << 20), 4, 4 << 20, 64 << 20), 4 << 20);
        assert_eq!(share_of(None, 4, 4 << 20, 64 << 20), 64 << 20);
    }
}
