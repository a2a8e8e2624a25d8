//! TCP proxies for the cluster links: one listener per directed link `i -> j` (node `i`
//! dials node `j` through it), so the harness can cut, blackhole or slow any link.
//!
//! - **Pass**: bytes flow both ways.
//! - **Cut**: open connections are closed (the peers see the close at once) and new ones are
//!   accepted and closed straight away (connection refused, in effect).
//! - **Blackhole**: connections stay open but every byte is dropped (silence: the failure
//!   detector must time out); new connections are accepted and swallowed the same way.
//! - **Delay**: every chunk waits before it is forwarded (a slow link).
//!
//! Every mode change but a change of delay closes the open connections: a stream that lost
//! bytes in a blackhole cannot be resumed.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What a link does to its traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    Cut,
    Blackhole,
    Delay(Duration),
}

#[derive(Debug)]
struct LinkState {
    mode: Mutex<Mode>,
    /// Bumped to close every open connection.
    generation: AtomicU64,
}

impl LinkState {
    fn mode(&self) -> Mode {
        *self.mode.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One directed link's proxy.
#[derive(Debug, Clone)]
pub struct Link {
    pub from: usize,
    pub to: usize,
    pub port: u16,
    state: Arc<LinkState>,
}

impl Link {
    /// Listens on a free port of 127.0.0.1 and forwards to `127.0.0.1:target`.
    pub fn start(from: usize, to: usize, target: u16) -> anyhow::Result<Link> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let state = Arc::new(LinkState {
            mode: Mutex::new(Mode::Pass),
            generation: AtomicU64::new(0),
        });
        let accept_state = state.clone();
        std::thread::Builder::new()
            .name(format!("proxy-{from}-{to}"))
            .spawn(move || accept_loop(&listener, target, &accept_state))?;
        Ok(Link {
            from,
            to,
            port,
            state,
        })
    }

    pub fn mode(&self) -> Mode {
        self.state.mode()
    }

    /// Switches the link to `mode`, closing open connections unless only the delay changes.
    pub fn set(&self, mode: Mode) {
        let mut current = self.state.mode.lock().unwrap_or_else(|e| e.into_inner());
        let keep = matches!(
            (*current, mode),
            (Mode::Pass | Mode::Delay(_), Mode::Pass | Mode::Delay(_))
        );
        *current = mode;
        if !keep {
            self.state.generation.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn accept_loop(listener: &TcpListener, target: u16, state: &Arc<LinkState>) {
    for stream in listener.incoming() {
        let Ok(client) = stream else { continue };
        if state.mode() == Mode::Cut {
            drop(client);
            continue;
        }
        let generation = state.generation.load(Ordering::SeqCst);
        let Ok(upstream) = TcpStream::connect(("127.0.0.1", target)) else {
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = upstream.set_nodelay(true);
        let (Ok(client2), Ok(upstream2)) = (client.try_clone(), upstream.try_clone()) else {
            continue;
        };
        let (s1, s2) = (state.clone(), state.clone());
        let _ = std::thread::Builder::new()
            .name("proxy-pump".into())
            .spawn(move || pump(client, upstream, &s1, generation));
        let _ = std::thread::Builder::new()
            .name("proxy-pump".into())
            .spawn(move || pump(upstream2, client2, &s2, generation));
    }
}

/// Copies `from` to `to` until either closes or the link's generation moves on.
fn pump(mut from: TcpStream, mut to: TcpStream, state: &LinkState, generation: u64) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        if state.generation.load(Ordering::SeqCst) != generation {
            break;
        }
        let n = match from.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(_) => break,
        };
        match state.mode() {
            Mode::Pass => {}
            Mode::Delay(delay) => std::thread::sleep(delay),
            Mode::Blackhole => continue,
            Mode::Cut => break,
        }
        if state.generation.load(Ordering::SeqCst) != generation
            || to.write_all(&buffer[..n]).is_err()
        {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
