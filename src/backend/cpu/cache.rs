//! The CPU's last-level cache size, as the OS reports it: what decides
//! whether the two LSTM directions' step weights can stay cached side by
//! side at small batches (see `SHARED_STEPS_MAX_BATCH` in `model/mod.rs`).

use std::sync::OnceLock;

/// Bytes of the largest cache (L3 on the CPUs this project targets) that
/// the first CPU sees, from `/sys/devices/system/cpu/cpu0/cache` on Linux
/// (checked once); `None` where the OS does not say.
pub fn last_level_cache_bytes() -> Option<usize> {
    static SIZE: OnceLock<Option<usize>> = OnceLock::new();
    *SIZE.get_or_init(read)
}

fn read() -> Option<usize> {
    let dir = std::fs::read_dir("/sys/devices/system/cpu/cpu0/cache").ok()?;
    dir.filter_map(|e| {
        let path = e.ok()?.path();
        let kind = std::fs::read_to_string(path.join("type")).ok()?;
        if kind.trim() == "Instruction" {
            return None;
        }
        parse_size(&std::fs::read_to_string(path.join("size")).ok()?)
    })
    .max()
}

/// `"32768K"`, `"480M"`, `"1024"` (bytes) as bytes.
fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let (num, mul) = match s.as_bytes().last()? {
        b'K' | b'k' => (&s[..s.len() - 1], 1 << 10),
        b'M' | b'm' => (&s[..s.len() - 1], 1 << 20),
        b'G' | b'g' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<usize>().ok()?.checked_mul(mul)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_as_sysfs_writes_them() {
        assert_eq!(parse_size("32768K\n"), Some(32 << 20));
        assert_eq!(parse_size("480M"), Some(480 << 20));
        assert_eq!(parse_size("1024"), Some(1024));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size(""), None);
        #[cfg(target_os = "linux")]
        if let Some(b) = last_level_cache_bytes() {
            // Every CPU this runs on has at least 256 KiB of cache.
            assert!(b >= 256 << 10, "{b}");
        }
    }
}
