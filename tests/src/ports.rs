//! Ports for servers a test starts later on 127.0.0.1, drawn at random from fixed ranges below
//! Linux's default ephemeral range (32768-60999). A port from inside that range, once
//! released, may be handed to any outgoing connection as its source port before the server
//! binds it: a node restarted on its port, or started on a fresh one, then failed with
//! "Address already in use".

use std::collections::hash_map::RandomState;
use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher};
use std::net::TcpListener;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

/// A free port `p` in `range` (and `p + companion_offset` too when the offset is not zero),
/// never returned before in this process.
pub fn reserve(range: Range<u16>, companion_offset: u16) -> u16 {
    static TAKEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let mut taken = TAKEN
        .get_or_init(|| Mutex::new(HashSet::new()))
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let span = u64::from(range.end - range.start);
    for _ in 0..10_000 {
        let port = range.start + (random() % span) as u16;
        let mut wanted = vec![port];
        if companion_offset != 0 {
            wanted.push(port + companion_offset);
        }
        if wanted.iter().all(|p| !taken.contains(p) && is_free(*p)) {
            taken.extend(wanted);
            return port;
        }
    }
    panic!("no free port found in {range:?}");
}

fn is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Randomness without a crate: std's per-instance random hasher keys, plus a counter.
fn random() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u32(std::process::id());
    hasher.finish()
}
