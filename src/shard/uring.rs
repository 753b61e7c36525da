//! The io_uring write path (`io = "uring"`): every flush of one loop turn becomes one
//! `sendmsg` submission, and the whole turn goes to the kernel in one system call.
//!
//! Owned by one shard. A flush hands its segments here instead of writing them; the
//! frames they point into are kept alive (`Rc` clones) with the iovecs and message
//! header until the completion is reaped, which the shard does before anything else can
//! touch those connections ([`Shard::flush_dirty`](super::Shard) submits and waits at
//! the end of its budget). Sends carry `MSG_DONTWAIT`, so a full socket completes with
//! `EAGAIN` instead of parking in the kernel: the shard then keeps the bytes, exactly as
//! after a short `writev`.

use io_uring::{opcode, types, IoUring};
use std::os::fd::RawFd;
use std::rc::Rc;

use super::conn::Frame;
use super::flush::Flushed;

/// Most iovecs one submission may carry (Linux `UIO_MAXIOV`); a larger flush is written
/// directly.
pub const MAX_IOV: usize = 1024;

/// The iovecs of `segments`, as raw pointers: the caller moves the owners of those bytes
/// into the [`PendingFlush`] that carries them.
pub fn iovecs(segments: &[&[u8]]) -> Vec<libc::iovec> {
    segments
        .iter()
        .map(|s| libc::iovec {
            iov_base: s.as_ptr() as *mut libc::c_void,
            iov_len: s.len(),
        })
        .collect()
}

/// A flush waiting for its completion.
pub struct PendingFlush {
    pub key: usize,
    pub gen: u32,
    /// What the flush covers, for the shard to finish it once it completes.
    pub flushed: Flushed,
    /// Keeps the frames' bytes alive while the kernel may read them.
    _frames: Vec<Rc<Frame>>,
    /// Or the feed's flat run of them (see `Feed::flat`).
    _flat: Option<Rc<Vec<u8>>>,
    /// Keeps the head (warnings, batch header) alive likewise.
    _head: Vec<u8>,
    iov: Vec<libc::iovec>,
    msg: Box<libc::msghdr>,
    pub total: usize,
}

impl PendingFlush {
    /// Takes the submission's buffers: `iov` (from [`iovecs`]) points into `frames`,
    /// `flat`, `head` or static data, all of which this value keeps alive.
    pub fn new(
        key: usize,
        gen: u32,
        flushed: Flushed,
        frames: Vec<Rc<Frame>>,
        flat: Option<Rc<Vec<u8>>>,
        head: Vec<u8>,
        iov: Vec<libc::iovec>,
    ) -> PendingFlush {
        let total = iov.iter().map(|v| v.iov_len).sum();
        // SAFETY: msghdr is plain data; all-zero is a valid empty header.
        let mut msg: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = iov.len() as _;
        PendingFlush {
            key,
            gen,
            flushed,
            _frames: frames,
            _flat: flat,
            _head: head,
            iov,
            msg,
            total,
        }
    }

    /// The bytes to send, in order.
    pub fn segments(&self) -> Vec<&[u8]> {
        self.iov
            .iter()
            // SAFETY: every iovec points into a buffer this value keeps alive.
            .map(|v| unsafe { std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len) })
            .collect()
    }

    /// The bytes from `written` on, for the connection to keep after a short send.
    pub fn rest(&self, written: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.total.saturating_sub(written));
        let mut skip = written;
        for s in self.segments() {
            if skip >= s.len() {
                skip -= s.len();
                continue;
            }
            out.extend_from_slice(&s[skip..]);
            skip = 0;
        }
        out
    }
}

/// One shard's ring and the flushes of the current turn.
pub struct UringWriter {
    ring: IoUring,
    pending: Vec<PendingFlush>,
}

impl UringWriter {
    /// `None` where the kernel or sandbox refuses io_uring.
    pub fn new(entries: u32) -> std::io::Result<UringWriter> {
        Ok(UringWriter {
            ring: IoUring::new(entries)?,
            pending: Vec::new(),
        })
    }

    /// Queues a flush on socket `fd`; gives it back if the ring cannot take it (the
    /// caller then writes it directly). Boxed in the error: the rare path pays for it.
    pub fn push(&mut self, fd: RawFd, flush: PendingFlush) -> Result<(), Box<PendingFlush>> {
        let idx = self.pending.len() as u64;
        let entry = opcode::SendMsg::new(types::Fd(fd), &*flush.msg as *const libc::msghdr)
            .flags((libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) as u32)
            .build()
            .user_data(idx);
        // SAFETY: the message header, iovecs and the bytes they point to move into
        // `self.pending` (their heap addresses do not change) and stay there until
        // `complete` has reaped this entry.
        let mut pushed = unsafe { self.ring.submission().push(&entry) }.is_ok();
        if !pushed && self.ring.submit().is_ok() {
            // The submission queue was full: the kernel took what was queued; retry.
            pushed = unsafe { self.ring.submission().push(&entry) }.is_ok();
        }
        if !pushed {
            return Err(Box::new(flush));
        }
        self.pending.push(flush);
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Submits everything queued, waits for all of it, and returns each flush with the
    /// send's result (bytes written, or a negative errno).
    pub fn complete(&mut self) -> std::io::Result<Vec<(PendingFlush, i32)>> {
        let want = self.pending.len();
        let mut results: Vec<Option<i32>> = vec![None; want];
        let mut got = 0;
        while got < want {
            match self.ring.submit_and_wait(want - got) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => return Err(e),
            }
            for cqe in self.ring.completion() {
                if let Some(slot) = results.get_mut(cqe.user_data() as usize) {
                    if slot.is_none() {
                        got += 1;
                    }
                    *slot = Some(cqe.result());
                }
            }
        }
        Ok(self
            .pending
            .drain(..)
            .zip(results)
            .map(|(p, r)| (p, r.unwrap_or(-libc::EIO)))
            .collect())
    }
}
