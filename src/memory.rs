//! The memory the memory-pressure watch compares with its threshold, and giving freed memory
//! back to the system.
//!
//! What kills a node is its cgroup's limit (a container's, a systemd unit's `MemoryMax`), and
//! the cgroup is charged for more than the process's resident set: the kernel's socket
//! buffers (about 4 KiB per idle connection, up to `tcp_wmem` max while a client lags) and
//! the page cache of files it writes. A watch of the resident set alone lets the container
//! be killed before admission refuses anyone. So where the process is in a cgroup with a
//! memory limit, the watch measures the cgroup's working set, as the kubelet does: its usage
//! (`memory.current` in cgroup v2, `memory.usage_in_bytes` in v1) minus its inactive file
//! pages (`inactive_file`, `total_inactive_file` in v1 from `memory.stat`), which the kernel
//! reclaims before it kills anything. Without a limit, it measures the resident set (read
//! with the kernel's page size, which is 64 KiB on some arm64 kernels, not always 4 KiB).
//! [`Meter`] finds which applies once, from `/proc/self/cgroup`; the finding and reading
//! are functions of a directory, so that tests run them on files of their own.
//!
//! glibc's allocator keeps what the program frees for reuse, so after a spike ends (a burst
//! of large messages, a flood of connections that closed) resident memory stays at the
//! peak. A watch that compares that to a threshold would refuse upgrades for as long as the
//! process lives. [`give_back`] asks the allocator to return its free pages
//! (`malloc_trim(0)`: every arena, not only the top of the heap), so that resident memory
//! is again what the process uses. It walks the allocator's free lists holding each arena's
//! lock in turn, so it is called only when memory is at the threshold, not on every tick.
//!
//! The only `unsafe` in the crate is here: a call into glibc that takes no pointers.
//!
//! Must not depend on anything else in the crate.

use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
};

/// Where the cgroup file systems are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// cgroup v1 reports "no limit" as the largest page count times the page size (about
/// 2^63); anything above this is no limit.
const V1_NO_LIMIT: u64 = 1 << 62;

/// What the watch measures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The working set of the cgroup v2 in this directory, which has a memory limit.
    CgroupV2(PathBuf),
    /// The working set of the cgroup v1 memory controller's group in this directory.
    CgroupV1(PathBuf),
    /// The process's resident set: no cgroup with a limit was found.
    Process,
}

impl Source {
    /// The `source` label of `switchboard_memory_used_bytes`.
    #[must_use]
    pub const fn label(&self) -> &'static str {
        match self {
            Self::CgroupV2(_) => "cgroup_v2",
            Self::CgroupV1(_) => "cgroup_v1",
            Self::Process => "process",
        }
    }
}

/// The memory the watch measures, and the limit that kills the process when there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meter {
    pub source: Source,
    /// The cgroup's memory limit, in bytes.
    pub limit: Option<u64>,
}

/// This process's meter, found once.
pub fn meter() -> &'static Meter {
    static METER: OnceLock<Meter> = OnceLock::new();
    METER.get_or_init(|| {
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        Meter::find(Path::new(CGROUP_ROOT), &own)
    })
}

impl Meter {
    /// The meter of a process whose `/proc/self/cgroup` reads `own`, with the cgroup file
    /// systems mounted under `root`: the nearest cgroup with a memory limit, from the
    /// process's own up to the top (a limit set on a parent, as a systemd slice's, kills
    /// too), cgroup v2 first; else the resident set.
    #[must_use]
    pub fn find(root: &Path, own: &str) -> Meter {
        let (mut unified, mut v1_memory) = (None, None);
        // Lines are `hierarchy-id:controllers:path`; cgroup v2's is `0::path`.
        for line in own.lines() {
            let mut fields = line.splitn(3, ':');
            let (Some(_), Some(controllers), Some(path)) =
                (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            if controllers.is_empty() {
                unified = Some(path);
            } else if controllers.split(',').any(|name| name == "memory") {
                v1_memory = Some(path);
            }
        }
        // A pure v2 system mounts it at the root; a hybrid one at `unified`, usually
        // without the memory controller (then it has no memory.max, and v1 applies).
        let v2 = unified.and_then(|path| {
            [root.to_path_buf(), root.join("unified")]
                .into_iter()
                .filter(|mount| mount.join("cgroup.controllers").is_file())
                .find_map(|mount| nearest_limit(&mount, path, "memory.max", parse_v2_limit))
        });
        if let Some((dir, limit)) = v2 {
            return Meter {
                source: Source::CgroupV2(dir),
                limit: Some(limit),
            };
        }
        let v1 = v1_memory.and_then(|path| {
            nearest_limit(
                &root.join("memory"),
                path,
                "memory.limit_in_bytes",
                parse_v1_limit,
            )
        });
        match v1 {
            Some((dir, limit)) => Meter {
                source: Source::CgroupV1(dir),
                limit: Some(limit),
            },
            None => Meter {
                source: Source::Process,
                limit: None,
            },
        }
    }

    /// The memory now in use, in bytes, as [`Source`] says; `None` when it cannot be read.
    #[must_use]
    pub fn used(&self) -> Option<u64> {
        match &self.source {
            Source::CgroupV2(dir) => working_set(dir, "memory.current", "inactive_file"),
            Source::CgroupV1(dir) => {
                working_set(dir, "memory.usage_in_bytes", "total_inactive_file")
            }
            Source::Process => resident_bytes(),
        }
    }
}

/// The first directory from `mount/path` up to `mount` whose `file` holds a limit. When
/// `mount/path` does not exist (or leaves the mount), the process sees its own cgroup at the
/// mount (a container whose runtime mounted only its own subtree), so the search starts
/// there.
fn nearest_limit(
    mount: &Path,
    path: &str,
    file: &str,
    parse: fn(&str) -> Option<u64>,
) -> Option<(PathBuf, u64)> {
    let own = mount.join(path.trim_start_matches('/'));
    // A path with `..` is relative to another cgroup namespace's root: not under `mount`.
    let start = if own.is_dir() && !path.split('/').any(|part| part == "..") {
        own
    } else {
        mount.to_path_buf()
    };
    start
        .ancestors()
        .take_while(|dir| dir.starts_with(mount))
        .find_map(|dir| {
            let limit = parse(&std::fs::read_to_string(dir.join(file)).ok()?)?;
            Some((dir.to_path_buf(), limit))
        })
}

/// `memory.max`: bytes, or `max` for no limit.
fn parse_v2_limit(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// `memory.limit_in_bytes`: bytes, a value near 2^63 for no limit.
fn parse_v1_limit(text: &str) -> Option<u64> {
    text.trim()
        .parse()
        .ok()
        .filter(|&limit| limit < V1_NO_LIMIT)
}

/// The usage in `dir/usage_file` minus the `inactive` line of `dir/memory.stat` (0 when the
/// line is missing): what the kubelet calls the working set. Inactive file pages are page
/// cache the kernel reclaims before it kills anything, so counting them would refuse
/// upgrades for cache (of logs written, say) that is not pressure.
fn working_set(dir: &Path, usage_file: &str, inactive: &str) -> Option<u64> {
    let usage: u64 = std::fs::read_to_string(dir.join(usage_file))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(dir.join("memory.stat")).unwrap_or_default();
    let inactive = stat
        .lines()
        .find_map(|line| line.strip_prefix(inactive)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0u64);
    Some(usage.saturating_sub(inactive))
}

/// The process's resident memory, in bytes; `None` where `/proc` cannot be read.
#[must_use]
pub fn resident_bytes() -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        let statm = procfs::process::Process::myself().ok()?.statm().ok()?;
        Some(statm.resident * procfs::page_size())
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

/// Returns the allocator's free pages to the system; whether any were returned. Does
/// nothing off glibc (musl and the other systems' allocators return memory themselves).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(
    unsafe_code,
    reason = "malloc_trim is a glibc call with no safe wrapper in libc"
)]
pub fn give_back() -> bool {
    // SAFETY: `malloc_trim` takes no pointers and no caller-side invariants; glibc
    // serializes it with every other allocator call (it is MT-Safe).
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Returns the allocator's free pages to the system: nothing to do here.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
#[must_use]
pub fn give_back() -> bool {
    false
}

#[cfg(test)]
mod tests;
