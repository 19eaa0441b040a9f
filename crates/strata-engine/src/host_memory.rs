//! How much memory the host lets this process take: what the kernel can
//! still give (`MemAvailable`), and the room left under every memory limit
//! of the cgroups the process runs in.
//!
//! A control-plane call about to write a lot of memory at once
//! (`Port::reserve`, a layer made stateful on a reserved port) asks
//! [`available`] first and refuses what would not fit: past a cgroup's
//! limit the kernel kills the process instead of failing the allocation.
//!
//! The cgroups are found the way the kernel exposes them to the process,
//! not at fixed paths: `/proc/self/cgroup` names the process's group in
//! each hierarchy, `/proc/self/mountinfo` says where each hierarchy is
//! mounted (and which part of it, inside a container). Both versions
//! count:
//! - v2 (`cgroup2`, one unified hierarchy): `memory.max` less
//!   `memory.current`;
//! - v1 (`cgroup` with the `memory` controller; still the layout of many
//!   hosts, this project's CI machine among them): `memory.limit_in_bytes`
//!   less `memory.usage_in_bytes`.
//!
//! A limit anywhere up the tree binds too (a service's group under a
//! limited slice), so the group and each ancestor up to the mount are read
//! and the smallest room wins. Read on the control plane only, never on the
//! datapath.

use std::path::{Path, PathBuf};

/// Bytes of memory the process can still take: the smallest of the
/// kernel's `MemAvailable` and the room under each of its cgroups' memory
/// limits. `None` where none of them is known.
pub fn available() -> Option<usize> {
    let machine = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|i| mem_available(&i));
    let groups = own_memory_cgroups()
        .iter()
        .filter_map(MemoryCgroup::room)
        .min();
    match (machine, groups) {
        (Some(m), Some(g)) => Some(m.min(g)),
        (m, g) => m.or(g),
    }
}

/// The process's memory cgroups, one per hierarchy with memory control
/// ([`available`] reads their limits).
pub fn own_memory_cgroups() -> Vec<MemoryCgroup> {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    match (read("/proc/self/cgroup"), read("/proc/self/mountinfo")) {
        (Some(cgroups), Some(mounts)) => memory_cgroups(&cgroups, &mounts),
        _ => Vec::new(),
    }
}

/// The `MemAvailable` line of a `/proc/meminfo` text, in bytes.
fn mem_available(info: &str) -> Option<usize> {
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let mut words = line.split_whitespace().skip(1);
    let kib: usize = words.next()?.parse().ok()?;
    (words.next() == Some("kB")).then(|| kib.saturating_mul(1024))
}

/// Which interface a cgroup directory speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}

impl CgroupVersion {
    /// The files holding a group's limit and its use.
    fn files(self) -> (&'static str, &'static str) {
        match self {
            CgroupVersion::V1 => ("memory.limit_in_bytes", "memory.usage_in_bytes"),
            CgroupVersion::V2 => ("memory.max", "memory.current"),
        }
    }
}

/// A cgroup directory with memory control, and the mount point of its
/// hierarchy (the highest ancestor the process can read).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryCgroup {
    pub version: CgroupVersion,
    pub dir: PathBuf,
    pub mount: PathBuf,
}

impl MemoryCgroup {
    /// The smallest room left under the limits of the group and its
    /// ancestors up to the mount; `None` if none of them has a limit.
    pub fn room(&self) -> Option<usize> {
        let (limit_file, use_file) = self.version.files();
        let mut room: Option<usize> = None;
        for dir in self.dir.ancestors() {
            let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
            if let (Some(limit), Some(used)) = (read(limit_file), read(use_file))
                && let Some(r) = limit_room(&limit, &used)
            {
                room = Some(room.map_or(r, |x| x.min(r)));
            }
            if dir == self.mount {
                break;
            }
        }
        room
    }
}

/// Room left from a limit file's text (`max`, or a number of bytes) and a
/// use file's; `None` when there is no limit. A v1 group without a limit
/// reports a number near 2^63, which leaves room larger than any machine.
fn limit_room(limit: &str, used: &str) -> Option<usize> {
    let limit: usize = limit.trim().parse().ok()?;
    let used: usize = used.trim().parse().ok()?;
    Some(limit.saturating_sub(used))
}

/// The memory cgroups named by a `/proc/self/cgroup` text, placed by a
/// `/proc/self/mountinfo` text.
fn memory_cgroups(cgroups: &str, mountinfo: &str) -> Vec<MemoryCgroup> {
    let mounts: Vec<Mount> = mountinfo.lines().filter_map(Mount::parse).collect();
    let mut found = Vec::new();
    for line in cgroups.lines() {
        // `hierarchy-id:controllers:path`; the path may itself hold colons.
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let version = if id == "0" && controllers.is_empty() {
            CgroupVersion::V2
        } else if controllers.split(',').any(|c| c == "memory") {
            CgroupVersion::V1
        } else {
            continue;
        };
        for m in mounts.iter().filter(|m| m.serves(version)) {
            if let Some(dir) = m.dir_of(path)
                && dir.is_dir()
            {
                found.push(MemoryCgroup {
                    version,
                    dir,
                    mount: m.point.clone(),
                });
                break;
            }
        }
    }
    found
}

/// A cgroup filesystem mount, from one `mountinfo` line.
#[derive(Debug, PartialEq, Eq)]
struct Mount {
    /// The directory of the hierarchy mounted (`/` unless a container was
    /// given only its own part).
    root: String,
    point: PathBuf,
    version: CgroupVersion,
    /// v1: the `memory` controller is in this hierarchy.
    memory: bool,
}

impl Mount {
    /// `id parent major:minor root point options [optional…] - fstype
    /// source super-options`; `None` for other filesystems.
    fn parse(line: &str) -> Option<Mount> {
        let (head, tail) = line.split_once(" - ")?;
        let head: Vec<&str> = head.split(' ').collect();
        let mut tail = tail.split(' ');
        let fstype = tail.next()?;
        let _source = tail.next();
        let options = tail.next().unwrap_or("");
        let version = match fstype {
            "cgroup2" => CgroupVersion::V2,
            "cgroup" => CgroupVersion::V1,
            _ => return None,
        };
        Some(Mount {
            root: unescape(head.get(3)?),
            point: PathBuf::from(unescape(head.get(4)?)),
            version,
            memory: options.split(',').any(|o| o == "memory"),
        })
    }

    fn serves(&self, version: CgroupVersion) -> bool {
        self.version == version && (version == CgroupVersion::V2 || self.memory)
    }

    /// Where the group at `path` (as `/proc/self/cgroup` names it) is in
    /// this mount, if the mount shows it.
    fn dir_of(&self, path: &str) -> Option<PathBuf> {
        let rest = if self.root == "/" {
            path
        } else {
            match path.strip_prefix(self.root.as_str()) {
                Some(r) if r.is_empty() || r.starts_with('/') => r,
                _ => return None,
            }
        };
        let rest = rest.trim_start_matches('/');
        let dir = self.point.join(rest);
        // No `..` can lead out of the mount (the kernel writes these
        // paths, but a path is data).
        (!Path::new(rest)
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir)))
        .then_some(dir)
    }
}

/// `mountinfo` escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).and_then(|d| {
            d.iter()
                .all(|c| (b'0'..=b'7').contains(c))
                .then(|| (d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'))
        });
        match (b[i], octal) {
            (b'\\', Some(c)) => {
                out.push(c);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_available_reads_the_kernels_line() {
        let info = "MemTotal:       24576000 kB\nMemFree:  100 kB\nMemAvailable:   20480000 kB\n";
        assert_eq!(mem_available(info), Some(20_480_000 * 1024));
        for bad in [
            "",
            "MemAvailable: lots kB",
            "MemAvailable: 12",
            "MemAvailable: 12 MB",
        ] {
            assert_eq!(mem_available(bad), None, "{bad:?}");
        }
        assert_eq!(limit_room("max\n", "123\n"), None);
        assert_eq!(limit_room("1000\n", "300\n"), Some(700));
        assert_eq!(limit_room("1000", "3000"), Some(0));
        // This machine's own, where there is one.
        if Path::new("/proc/meminfo").exists() {
            assert!(available().is_some_and(|b| b > 0));
        }
    }

    const HYBRID_MOUNTS: &str = "\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
33 25 0:28 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
34 33 0:29 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
38 33 0:33 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,cpu,cpuacct
41 33 0:36 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:18 - cgroup cgroup rw,memory
";

    #[test]
    fn a_hybrid_hosts_memory_group_is_the_v1_one() {
        let m: Vec<Mount> = HYBRID_MOUNTS.lines().filter_map(Mount::parse).collect();
        assert_eq!(m.len(), 3, "{m:?}");
        assert!(m[0].serves(CgroupVersion::V2));
        assert!(
            !m[1].serves(CgroupVersion::V1),
            "no memory controller there"
        );
        assert!(m[2].serves(CgroupVersion::V1));
        let mem = &m[2];
        assert_eq!(
            mem.dir_of("/process_api/c71c"),
            Some(PathBuf::from("/sys/fs/cgroup/memory/process_api/c71c"))
        );
        assert_eq!(
            mem.dir_of("/"),
            Some(PathBuf::from("/sys/fs/cgroup/memory"))
        );
        assert_eq!(mem.dir_of("/a/../../etc"), None);
    }

    #[test]
    fn a_containers_mount_of_its_own_part_resolves_below_its_root() {
        // A container without a cgroup namespace: the mount shows only its
        // own group, named in full by /proc/self/cgroup.
        let line =
            "700 690 0:36 /docker/abc /sys/fs/cgroup/memory ro,nosuid - cgroup cgroup rw,memory";
        let m = Mount::parse(line).expect("a cgroup mount");
        assert_eq!(m.root, "/docker/abc");
        assert_eq!(
            m.dir_of("/docker/abc"),
            Some(PathBuf::from("/sys/fs/cgroup/memory"))
        );
        assert_eq!(
            m.dir_of("/docker/abc/worker"),
            Some(PathBuf::from("/sys/fs/cgroup/memory/worker"))
        );
        // Outside what the mount shows, or a sibling sharing the prefix.
        assert_eq!(m.dir_of("/docker/other"), None);
        assert_eq!(m.dir_of("/docker/abcdef"), None);
    }

    #[test]
    fn mount_points_are_unescaped_and_other_filesystems_skipped() {
        let line = r"40 33 0:40 / /mnt/with\040space rw - cgroup2 cgroup2 rw";
        let m = Mount::parse(line).expect("cgroup2");
        assert_eq!(m.point, PathBuf::from("/mnt/with space"));
        assert_eq!(unescape(r"a\134b\12"), "a\\b\\12");
        for other in [
            "25 30 0:23 / /sys rw - sysfs sysfs rw",
            "no separator here",
            "",
        ] {
            assert_eq!(Mount::parse(other), None, "{other:?}");
        }
    }

    /// A cgroup tree in a temporary directory: limits on the group and on
    /// an ancestor; the smallest room wins, groups without limits and
    /// unreadable files are passed over.
    #[test]
    fn the_tightest_limit_up_the_tree_wins() {
        let base = std::env::temp_dir().join(format!(
            "strata-cgroup-test-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        let leaf = base.join("slice/service");
        std::fs::create_dir_all(&leaf).expect("temp dirs");
        let write = |dir: &Path, f: &str, v: &str| std::fs::write(dir.join(f), v).expect("write");
        // v2: the slice allows 1,000 and holds 900; the service has no limit.
        write(&base.join("slice"), "memory.max", "1000\n");
        write(&base.join("slice"), "memory.current", "900\n");
        write(&leaf, "memory.max", "max\n");
        write(&leaf, "memory.current", "500\n");
        let g = MemoryCgroup {
            version: CgroupVersion::V2,
            dir: leaf.clone(),
            mount: base.clone(),
        };
        assert_eq!(g.room(), Some(100));
        // The service's own limit is tighter.
        write(&leaf, "memory.max", "520\n");
        assert_eq!(g.room(), Some(20));
        // Above the mount nothing is read (a limit there is not ours).
        let g = MemoryCgroup {
            mount: leaf.clone(),
            ..g
        };
        assert_eq!(g.room(), Some(20));
        // v1 names its files differently; no files, no limit.
        let v1 = MemoryCgroup {
            version: CgroupVersion::V1,
            dir: leaf.clone(),
            mount: base.clone(),
        };
        assert_eq!(v1.room(), None);
        write(&leaf, "memory.limit_in_bytes", "9223372036854771712\n");
        write(&leaf, "memory.usage_in_bytes", "4096\n");
        assert_eq!(v1.room(), Some(9223372036854771712 - 4096));
        std::fs::remove_dir_all(&base).expect("cleanup");
    }

    use proptest::strategy::Strategy;

    /// Pieces of the two formats, valid and not.
    const PATHS: [&str; 9] = [
        "/",
        "/a",
        "/a/b",
        "/a/..",
        "/a/../..",
        "..",
        "",
        "/docker/abc",
        "/a\\040b",
    ];

    fn piece(of: &'static [&'static str]) -> impl Strategy<Value = &'static str> {
        proptest::sample::select(of)
    }

    proptest::proptest! {
        /// Mount lines of the right shape with any roots, mount points and
        /// types, and cgroup lines with any paths, among lines of any
        /// pieces: no panic, and whatever resolves lies below its mount
        /// point (never back out of it). The kernel writes these texts, but
        /// a parser of text is fuzzed all the same.
        #[test]
        fn any_cgroup_and_mount_text_parses_without_panic(
            mounts in proptest::collection::vec(
                (piece(&PATHS), piece(&["/sys/fs/cgroup/memory", "/tmp", "/", "/m\\040n"]),
                 piece(&["cgroup", "cgroup2", "tmpfs", ""]),
                 piece(&["rw,memory", "rw", "memory", ""]), proptest::bool::ANY)
                    .prop_map(|(root, point, fs, opts, sep)| {
                        let sep = if sep { " - " } else { " " };
                        format!("41 33 0:36 {root} {point} rw{sep}{fs} {fs} {opts}")
                    }),
                0..5,
            ),
            groups in proptest::collection::vec(
                (piece(&["0", "4", "", "x"]), piece(&["", "memory", "cpu,memory", "name=x"]),
                 piece(&PATHS))
                    .prop_map(|(id, c, path)| format!("{id}:{c}:{path}")),
                0..5,
            ),
            garbage in proptest::collection::vec(
                proptest::collection::vec(piece(&["-", " - ", ":", "cgroup", "0", "/", " ", "\\"]), 0..8)
                    .prop_map(|w| w.concat()),
                0..3,
            ),
        ) {
            let mounts = [mounts, garbage.clone()].concat().join("\n");
            let groups = [groups, garbage].concat().join("\n");
            for line in mounts.lines() {
                if let Some(m) = Mount::parse(line) {
                    for g in groups.lines() {
                        let path = g.splitn(3, ':').nth(2).unwrap_or("");
                        if let Some(dir) = m.dir_of(path) {
                            let below = dir.strip_prefix(&m.point);
                            proptest::prop_assert!(
                                below.is_ok_and(|b| !b
                                    .components()
                                    .any(|c| c == std::path::Component::ParentDir)),
                                "{dir:?} outside {:?}",
                                m.point
                            );
                        }
                    }
                }
            }
            for g in memory_cgroups(&groups, &mounts) {
                proptest::prop_assert!(g.dir.starts_with(&g.mount));
            }
        }
    }

    #[test]
    fn cgroup_lines_pick_the_memory_hierarchies() {
        let dir = std::env::temp_dir();
        let mounts = format!(
            "41 33 0:36 / {} rw - cgroup cgroup rw,memory\n34 33 0:29 / /nonexistent rw - cgroup2 cgroup2 rw\n",
            dir.display()
        );
        let cgroups = "9:name=systemd:/\n4:memory:/\n1:cpu,cpuacct:/x\n0::/\n";
        let found = memory_cgroups(cgroups, &mounts);
        // The v1 memory group resolves (its directory exists); the v2 one
        // does not (its mount point is missing) and is left out.
        assert_eq!(
            found,
            vec![MemoryCgroup {
                version: CgroupVersion::V1,
                dir: dir.clone(),
                mount: dir.clone(),
            }]
        );
        // Garbage lines are skipped.
        assert!(memory_cgroups("garbage\n::\n", &mounts).is_empty());
    }
}
