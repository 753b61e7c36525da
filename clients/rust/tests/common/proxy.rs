//! A TCP proxy on loopback that a test controls, for the failures a client meets between
//! itself and the server (a load balancer, a flaky network). Each connection accepted is
//! handled by the [`Mode`] of that moment; [`Proxy::drop_connections`] ends every open
//! one (a network blip); [`Proxy::hold_answers_after`] lets a connection's requests
//! through but holds the server's answers once the client has sent a text frame that
//! contains a marker (a request in flight at a drop, a `subscribe` never answered).
//!
//! Plain threads and blocking sockets, so both the client's async tests and the CLI's
//! synchronous tests (`tests/cli.rs` includes this file by path) can use it. Owned by the
//! client's tests; dropping the proxy ends its connections and its threads.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// What the proxy does with a connection it accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Piped both ways to the upstream port.
    Pass,
    /// Closed at once: a proxy with no backend.
    Close,
    /// Reset at once (RST): a peer that went away.
    Reset,
    /// Accepted and never answered (what the client sends is read and dropped).
    BlackHole,
}

const MODES: [Mode; 4] = [Mode::Pass, Mode::Close, Mode::Reset, Mode::BlackHole];

struct Shared {
    upstream: u16,
    mode: Mutex<Mode>,
    accepted: Mutex<HashMap<Mode, usize>>,
    hold_after: Mutex<Option<String>>,
    held: AtomicUsize,
    /// Open connections: the client side and, in `Pass`, the upstream side.
    live: Mutex<HashMap<u64, (TcpStream, Option<TcpStream>)>>,
    next_id: AtomicU64,
    stop: AtomicBool,
}

pub struct Proxy {
    pub port: u16,
    shared: Arc<Shared>,
}

impl Proxy {
    /// A proxy to `127.0.0.1:upstream` on a free loopback port, in [`Mode::Pass`].
    pub fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy bind");
        let port = listener.local_addr().expect("proxy addr").port();
        let shared = Arc::new(Shared {
            upstream,
            mode: Mutex::new(Mode::Pass),
            accepted: Mutex::new(MODES.iter().map(|m| (*m, 0)).collect()),
            hold_after: Mutex::new(None),
            held: AtomicUsize::new(0),
            live: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if s.stop.load(Ordering::SeqCst) {
                    return;
                }
                if let Ok(stream) = stream {
                    accept(&s, stream);
                }
            }
        });
        Proxy { port, shared }
    }

    /// The proxy's WebSocket URL for `path`.
    pub fn ws(&self, path: &str) -> String {
        format!("ws://127.0.0.1:{}{path}", self.port)
    }

    /// Connections accepted from now on get `mode`.
    pub fn set_mode(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap() = mode;
    }

    /// How many connections `mode` has handled.
    pub fn accepted(&self, mode: Mode) -> usize {
        self.shared.accepted.lock().unwrap()[&mode]
    }

    /// Connections passed from now on stop forwarding the server's bytes once the client
    /// has sent a text frame containing `marker` (`None`: no more holding).
    pub fn hold_answers_after(&self, marker: Option<&str>) {
        *self.shared.hold_after.lock().unwrap() = marker.map(str::to_string);
    }

    /// How many connections hold the server's answers.
    pub fn held(&self) -> usize {
        self.shared.held.load(Ordering::SeqCst)
    }

    /// Ends every open connection, both sides; returns how many there were.
    pub fn drop_connections(&self) -> usize {
        let live: Vec<_> = self.shared.live.lock().unwrap().drain().collect();
        for (_, (client, upstream)) in &live {
            let _ = client.shutdown(Shutdown::Both);
            if let Some(u) = upstream {
                let _ = u.shutdown(Shutdown::Both);
            }
        }
        live.len()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.drop_connections();
        // Wakes the accept loop so that it sees `stop`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn accept(s: &Arc<Shared>, client: TcpStream) {
    let mode = *s.mode.lock().unwrap();
    *s.accepted.lock().unwrap().get_mut(&mode).unwrap() += 1;
    let id = s.next_id.fetch_add(1, Ordering::SeqCst);
    match mode {
        Mode::Close => drop(client),
        Mode::Reset => reset(client),
        Mode::BlackHole => {
            let Ok(reader) = client.try_clone() else {
                return;
            };
            s.live.lock().unwrap().insert(id, (client, None));
            let s = s.clone();
            std::thread::spawn(move || {
                drain(reader);
                s.live.lock().unwrap().remove(&id);
            });
        }
        Mode::Pass => {
            let Ok(upstream) = TcpStream::connect(("127.0.0.1", s.upstream)) else {
                return;
            };
            let (Ok(c2), Ok(u2), Ok(c3), Ok(u3)) = (
                client.try_clone(),
                upstream.try_clone(),
                client.try_clone(),
                upstream.try_clone(),
            ) else {
                return;
            };
            s.live.lock().unwrap().insert(id, (c3, Some(u3)));
            let held = Arc::new(AtomicBool::new(false));
            let marker = s.hold_after.lock().unwrap().clone();
            let (s1, h1) = (s.clone(), held.clone());
            std::thread::spawn(move || {
                client_to_server(client, upstream, marker, &h1, &s1);
                s1.live.lock().unwrap().remove(&id);
            });
            let s2 = s.clone();
            std::thread::spawn(move || {
                server_to_client(u2, c2, &held);
                s2.live.lock().unwrap().remove(&id);
            });
        }
    }
}

/// Closes with RST (SO_LINGER 0) instead of FIN.
fn reset(stream: TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket fd and a correctly sized option value.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(stream);
}

fn drain(mut r: TcpStream) {
    let mut buf = [0u8; 4096];
    while matches!(r.read(&mut buf), Ok(n) if n > 0) {}
}

fn end(a: &TcpStream, b: &TcpStream) {
    let _ = a.shutdown(Shutdown::Both);
    let _ = b.shutdown(Shutdown::Both);
}

fn client_to_server(
    mut from: TcpStream,
    mut to: TcpStream,
    marker: Option<String>,
    held: &AtomicBool,
    s: &Shared,
) {
    let mut frames = marker.map(|m| Frames::new(m.into_bytes()));
    let mut buf = [0u8; 16384];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // Held before the request goes on: its answer can then never slip through.
        if let Some(f) = frames.as_mut() {
            if f.push(&buf[..n]) && !held.swap(true, Ordering::SeqCst) {
                s.held.fetch_add(1, Ordering::SeqCst);
                frames = None;
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    end(&from, &to);
}

fn server_to_client(mut from: TcpStream, mut to: TcpStream, held: &AtomicBool) {
    let mut buf = [0u8; 16384];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if held.load(Ordering::SeqCst) {
            continue; // read and dropped: the client never sees it
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    end(&from, &to);
}

/// The client's side of a WebSocket connection, decoded just enough to find a marker in
/// a text frame: the HTTP upgrade head, then masked frames.
struct Frames {
    marker: Vec<u8>,
    buf: Vec<u8>,
    head_done: bool,
}

impl Frames {
    fn new(marker: Vec<u8>) -> Frames {
        Frames {
            marker,
            buf: Vec::new(),
            head_done: false,
        }
    }

    /// Adds bytes; whether a complete text frame so far contains the marker.
    fn push(&mut self, bytes: &[u8]) -> bool {
        self.buf.extend_from_slice(bytes);
        if !self.head_done {
            let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                return false;
            };
            self.buf.drain(..i + 4);
            self.head_done = true;
        }
        loop {
            if self.buf.len() < 2 {
                return false;
            }
            let opcode = self.buf[0] & 0x0f;
            let masked = self.buf[1] & 0x80 != 0;
            let (len, mut at) = match self.buf[1] & 0x7f {
                126 if self.buf.len() >= 4 => {
                    (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                }
                127 if self.buf.len() >= 10 => {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&self.buf[2..10]);
                    (u64::from_be_bytes(b) as usize, 10)
                }
                126 | 127 => return false,
                n => (n as usize, 2),
            };
            let mask = if masked {
                if self.buf.len() < at + 4 {
                    return false;
                }
                let m = [
                    self.buf[at],
                    self.buf[at + 1],
                    self.buf[at + 2],
                    self.buf[at + 3],
                ];
                at += 4;
                Some(m)
            } else {
                None
            };
            if self.buf.len() < at + len {
                return false;
            }
            let mut payload: Vec<u8> = self.buf[at..at + len].to_vec();
            if let Some(m) = mask {
                for (i, b) in payload.iter_mut().enumerate() {
                    *b ^= m[i % 4];
                }
            }
            self.buf.drain(..at + len);
            if opcode == 1
                && payload
                    .windows(self.marker.len())
                    .any(|w| w == self.marker.as_slice())
            {
                return true;
            }
        }
    }
}
