//! permessage-deflate on the flush path: what a connection that negotiated the extension
//! writes instead of the plain frames `Shard::flush_with` would.
//!
//! Part of the shard (its thread only); called by `flush_with` alone, kept apart from it
//! so the flush path's plain case reads as before. The compression itself is
//! [`crate::protocol::deflate`]; a frame's shared compressed form is [`Frame::deflated`](super::conn::Frame::deflated).

use std::rc::Rc;

use crate::config::Framing;
use crate::protocol::deflate::{Agreed, Compressor};
use crate::protocol::ws;

use super::conn::Frame;
use super::fanout::BATCH_CLOSE;
use super::feed::Feed;

/// What a compressing connection's flush writes.
pub(super) enum Deflated {
    /// Each frame's shared compressed form ([`Frame::deflated_bytes`]): `framing=frames`
    /// with the 32 KiB window.
    PerFrame,
    /// The whole flush, compressed into `head` for this connection alone (a window
    /// smaller than the shared forms').
    InHead,
    /// The whole `batch`, compressed: shared by the members of a feed's cohort, which
    /// write it as it is (no copy per member).
    Whole(Rc<Vec<u8>>),
    /// The compressor failed on the batch: the flush goes plain.
    Plain,
}

/// One flush of a compressing connection.
pub(super) struct DeflateFlush<'a> {
    pub agreed: Agreed,
    pub framing: Framing,
    /// The feed it reads from and the position of the flush's first message, if any.
    pub feed: Option<(&'a Feed, u64)>,
    /// No overflow warning in this flush (so a feed's members get the same bytes).
    pub no_warnings: bool,
    /// `framing=array`: where the batch's payload starts in `head`, and its length.
    pub batch_at: usize,
    pub batch_len: usize,
}

impl DeflateFlush<'_> {
    /// What the flush writes (see [`Deflated`]). `head` holds the plain batch's header,
    /// opening and warnings (`framing=array`), or the frames' warnings; it gains the
    /// compressed frames for [`Deflated::InHead`].
    pub fn write<'f>(
        &self,
        frames: impl Iterator<Item = &'f Rc<Frame>> + Clone,
        c: &mut Compressor,
        head: &mut Vec<u8>,
    ) -> Deflated {
        let a = &self.agreed;
        match self.framing {
            Framing::Frames if a.server_window_bits < 15 => {
                for f in frames {
                    f.deflate_into(a, c, head);
                }
                Deflated::InHead
            }
            Framing::Frames => Deflated::PerFrame,
            Framing::Array => {
                // The feed's cache holds 32 KiB-window batches only.
                let bits = if a.fits_window(self.batch_len) {
                    15
                } else {
                    a.server_window_bits
                };
                let n = frames.clone().count();
                // Members of a feed flushing the same range without warnings get the
                // same bytes: the feed keeps the last compressed batch for them.
                let cache = self
                    .feed
                    .filter(|_| self.no_warnings && bits == 15)
                    .map(|(feed, start)| (start, &feed.deflated_batch));
                let cached = cache.and_then(|(start, cell)| match &*cell.borrow() {
                    Some((s, m, d)) if *s == start && *m == n => Some(d.clone()),
                    _ => None,
                });
                let deflated = match cached {
                    Some(d) => d,
                    None => {
                        let mut parts: Vec<&[u8]> = Vec::with_capacity(2 * n + 2);
                        parts.push(&head[self.batch_at..]);
                        for (i, f) in frames.enumerate() {
                            if i > 0 {
                                parts.push(b",");
                            }
                            parts.push(f.message());
                        }
                        parts.push(BATCH_CLOSE);
                        let mut out = Vec::new();
                        let ok = c.frame(ws::OpCode::Text, &parts, bits, &mut out);
                        let out = ok.then(|| Rc::new(out));
                        if let Some((start, cell)) = cache {
                            *cell.borrow_mut() = Some((start, n, out.clone()));
                        }
                        out
                    }
                };
                deflated.map_or(Deflated::Plain, Deflated::Whole)
            }
        }
    }
}
