//! How much memory the host can still give this process, so that a checkpoint too large for it fails
//! with a message before its weights are converted, not with the kernel's out-of-memory kill halfway.

/// Set to `1` to load whatever the check says (a machine with swap, or an estimate known to be high).
pub const IGNORE_ENV: &str = "HBRIDGE_IGNORE_MEMORY_CHECK";

/// The memory available to new allocations without swapping, in bytes: Linux's `MemAvailable`
/// (free memory plus the page cache and buffers it can reclaim, which includes a memory-mapped
/// checkpoint's clean pages). `None` where it cannot be read (other systems), or with
/// [`IGNORE_ENV`] set to `1`: no check then. A container's cgroup limit is not read: its usage
/// counts page cache the kernel would reclaim, so subtracting it would refuse loads that fit.
pub fn available() -> Option<u64> {
    if std::env::var(IGNORE_ENV).as_deref() == Ok("1") {
        return None;
    }
    mem_available(&std::fs::read_to_string("/proc/meminfo").ok()?)
}

/// `MemAvailable` of a `/proc/meminfo` text, in bytes.
fn mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let mut fields = line["MemAvailable:".len()..].split_whitespace();
    let value: u64 = fields.next()?.parse().ok()?;
    match fields.next() {
        Some("kB") => value.checked_mul(1024),
        None => Some(value),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_mem_available_in_bytes() {
        let text = "MemTotal:       24565432 kB\nMemFree:        20000000 kB\nMemAvailable:   22000000 kB\n";
        assert_eq!(mem_available(text), Some(22_000_000 * 1024));
        assert_eq!(mem_available("MemTotal: 5 kB\n"), None);
        assert_eq!(mem_available("MemAvailable: lots kB\n"), None);
        assert_eq!(mem_available("MemAvailable: 7 MB\n"), None);
        #[cfg(target_os = "linux")]
        assert!(
            std::env::var(IGNORE_ENV).is_ok() || available().is_some_and(|b| b > 0),
            "this Linux machine's /proc/meminfo has a MemAvailable line"
        );
    }
}
