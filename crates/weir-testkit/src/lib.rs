//! What Weir's tests share.
//!
//! Tests start servers on addresses picked in advance (a controller must know its address
//! before it starts, and peers are told it). Asking the kernel for a free port (binding port 0)
//! and closing it again is racy: the port comes from the ephemeral range, so any connection
//! another test opens in the meantime may take it as its source port, and the server then
//! fails with "address in use". The ports here come from below the ephemeral range, which
//! the kernel never hands out by itself, are checked free, and are never handed out twice in
//! one process.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// The lowest port handed out.
const LOWEST: u16 = 10_000;

static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// The first port of the kernel's ephemeral range (32768 when it cannot be read).
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .filter(|&low: &u16| low > LOWEST + 1_000)
        .unwrap_or(32_768)
}

/// A port on 127.0.0.1 that is free now, outside the ephemeral range, and not handed out
/// before by this process.
///
/// # Panics
/// When no such port is found in a thousand tries (a test helper: that is the test's failure).
pub fn free_port() -> u16 {
    let span = u64::from(ephemeral_low() - LOWEST);
    // Start somewhere different in every process, so test binaries run side by side rarely
    // try the same ports.
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |t| u64::from(t.subsec_nanos()))
        ^ u64::from(std::process::id()).wrapping_mul(2_654_435_761);
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    for attempt in 0..1_000u64 {
        let offset = seed.wrapping_add(attempt.wrapping_mul(7_919)) % span;
        let port = LOWEST + u16::try_from(offset).unwrap_or(0);
        if handed_out.contains(&port) {
            continue;
        }
        if TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)).is_ok() {
            handed_out.insert(port);
            return port;
        }
    }
    panic!("no free port below the ephemeral range in a thousand tries");
}

/// [`free_port`] as an address on 127.0.0.1.
pub fn free_addr() -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, free_port()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_below_the_ephemeral_range_free_and_never_repeated() {
        let low = ephemeral_low();
        let ports: Vec<u16> = (0..200).map(|_| free_port()).collect();
        let distinct: BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len());
        for port in ports {
            assert!(
                (LOWEST..low).contains(&port),
                "{port} outside {LOWEST}..{low}"
            );
            TcpListener::bind(("127.0.0.1", port)).expect("a handed-out port binds");
        }
    }
}
