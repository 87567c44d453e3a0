//! The memory the process may use, as its cgroup says (a container's memory limit), so the
//! broker sizes its caches to the limit it runs under instead of the machine's memory.

/// The cgroup memory limit in bytes (v2 `memory.max`, else v1 `memory.limit_in_bytes`);
/// `None` when there is none (or it is "max", or absurdly large as v1 reports "no limit").
pub fn cgroup_limit_bytes() -> Option<u64> {
    let v2 = std::fs::read_to_string("/sys/fs/cgroup/memory.max").ok();
    let v1 = || std::fs::read_to_string("/sys/fs/cgroup/memory/memory.limit_in_bytes").ok();
    parse_limit(&v2.or_else(v1)?)
}

fn parse_limit(raw: &str) -> Option<u64> {
    let raw = raw.trim();
    if raw == "max" {
        return None;
    }
    // v1 says "no limit" with a number near i64::MAX rounded to pages
    raw.parse::<u64>().ok().filter(|b| *b < (1 << 62))
}

#[cfg(test)]
mod tests {
    #[test]
    fn limits_parse_and_no_limit_is_none() {
        assert_eq!(super::parse_limit("1073741824\n"), Some(1 << 30));
        assert_eq!(super::parse_limit("max\n"), None);
        assert_eq!(super::parse_limit("9223372036854771712"), None);
        assert_eq!(super::parse_limit("garbage"), None);
    }
}
