use std::path::{Path, PathBuf};

use super::*;

/// A directory of its own under the system's temporary one, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("sb-memory-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    /// Writes `text` to `path` under the directory, creating its parents.
    fn write(&self, path: &str, text: &str) -> &TempDir {
        let path = self.0.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
        self
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A cgroup v2 file system as a container with its own cgroup namespace sees it.
const V2_STAT: &str = "anon 300000000\nfile 200000000\nkernel 50000000\nsock 40000000\n\
                       active_file 80000000\ninactive_file 120000000\n";

#[test]
fn a_container_with_a_limit_measures_its_cgroups_working_set() {
    let root = TempDir::new("v2-container");
    root.write("cgroup.controllers", "cpu memory pids\n")
        .write("memory.max", "1610612736\n")
        .write("memory.current", "590000000\n")
        .write("memory.stat", V2_STAT);
    let meter = Meter::find(root.path(), "0::/\n");
    assert_eq!(meter.source, Source::CgroupV2(root.path().to_path_buf()));
    assert_eq!(meter.limit, Some(1_610_612_736));
    // Usage less the inactive file pages the kernel would reclaim first.
    assert_eq!(meter.used(), Some(590_000_000 - 120_000_000));
    assert_eq!(meter.source.label(), "cgroup_v2");
}

#[test]
fn a_service_under_a_limited_slice_measures_the_slice() {
    // A host's hierarchy: the service has no limit of its own, its slice has one.
    let root = TempDir::new("v2-slice");
    root.write("cgroup.controllers", "cpu memory\n")
        .write("system.slice/memory.max", "4294967296\n")
        .write("system.slice/memory.current", "1000\n")
        .write("system.slice/memory.stat", "inactive_file 400\n")
        .write("system.slice/switchboard.service/memory.max", "max\n")
        .write("system.slice/switchboard.service/memory.current", "900\n");
    let meter = Meter::find(root.path(), "0::/system.slice/switchboard.service\n");
    assert_eq!(
        meter.source,
        Source::CgroupV2(root.path().join("system.slice"))
    );
    assert_eq!(meter.limit, Some(4_294_967_296));
    assert_eq!(meter.used(), Some(600));
}

#[test]
fn no_limit_anywhere_measures_the_resident_set() {
    let root = TempDir::new("v2-unlimited");
    root.write("cgroup.controllers", "cpu memory\n")
        .write("user.slice/memory.max", "max\n")
        .write("user.slice/memory.current", "1000\n");
    let meter = Meter::find(root.path(), "0::/user.slice\n");
    assert_eq!(meter.source, Source::Process);
    assert_eq!(meter.limit, None);
    assert!(meter.used().unwrap() > 0, "the resident set of this test");
    // Nothing mounted at all: the same.
    let empty = TempDir::new("none");
    assert_eq!(Meter::find(empty.path(), "").source, Source::Process);
}

#[test]
fn a_cgroup_path_from_another_namespace_starts_at_the_mount() {
    // The runtime mounted only the container's own cgroup, but /proc/self/cgroup shows
    // the host's path (no cgroup namespace), or one with `..`.
    let root = TempDir::new("v2-foreign");
    root.write("cgroup.controllers", "memory\n")
        .write("memory.max", "1000000\n")
        .write("memory.current", "5000\n");
    for own in ["0::/kubepods/pod1/abc\n", "0::/../../elsewhere\n"] {
        let meter = Meter::find(root.path(), own);
        assert_eq!(meter.source, Source::CgroupV2(root.path().to_path_buf()));
        // No memory.stat: nothing subtracted.
        assert_eq!(meter.used(), Some(5000));
    }
}

#[test]
fn cgroup_v1_is_the_fallback() {
    let root = TempDir::new("v1");
    // Hybrid: the unified hierarchy holds no memory controller.
    root.write("unified/cgroup.controllers", "")
        .write("memory/docker/abc/memory.limit_in_bytes", "536870912\n")
        .write("memory/docker/abc/memory.usage_in_bytes", "300000\n")
        .write(
            "memory/docker/abc/memory.stat",
            "cache 200000\ninactive_file 1\ntotal_inactive_file 100000\n",
        )
        .write("memory/memory.limit_in_bytes", "9223372036854771712\n");
    let own = "12:pids:/docker/abc\n4:memory:/docker/abc\n1:name=systemd:/docker/abc\n0::/\n";
    let meter = Meter::find(root.path(), own);
    assert_eq!(
        meter.source,
        Source::CgroupV1(root.path().join("memory/docker/abc"))
    );
    assert_eq!(meter.limit, Some(536_870_912));
    assert_eq!(meter.used(), Some(200_000));
    assert_eq!(meter.source.label(), "cgroup_v1");
    // The v1 "no limit" value is no limit.
    let unlimited = TempDir::new("v1-unlimited");
    unlimited.write("memory/memory.limit_in_bytes", "9223372036854771712\n");
    assert_eq!(
        Meter::find(unlimited.path(), "4:memory:/\n").source,
        Source::Process
    );
}

/// What a spike of freed allocations leaves resident goes back to the system.
#[test]
fn freed_memory_is_given_back() {
    let before = resident_bytes().expect("Linux reports resident memory");
    // 4,096 blocks of 64 KiB, below glibc's mmap threshold: they come from an arena,
    // which keeps them when freed.
    let blocks: Vec<Vec<u8>> = (0..4096).map(|n| vec![n as u8; 64 * 1024]).collect();
    let during = resident_bytes().unwrap();
    assert!(during > before + 200 * 1024 * 1024, "{before} -> {during}");
    drop(blocks);
    give_back();
    let after = resident_bytes().unwrap();
    assert!(
        after < during - 200 * 1024 * 1024,
        "resident memory stayed at {after} after {during}"
    );
}
