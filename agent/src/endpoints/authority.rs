//! Makes gRPC C-core clients (grpcio ≥ 1.57: py-spiffe, also grpc-java) usable over the Unix
//! socket. They send the percent-encoded socket path as HTTP/2 `:authority`
//! (`tmp%2Fsigil-agent%2Fpublic%2Fapi.sock`), which `h2` (under tonic) rejects with
//! RST_STREAM(PROTOCOL_ERROR) before our handler runs; h2 has no switch to relax it (its
//! PR #487 is unmerged, see also grpc/grpc#38142).
//!
//! [`AuthorityFix`] sits between the socket and h2 on the client-to-server byte stream: it
//! decodes every request header block with its own HPACK decoder (mirroring the client's
//! encoder), replaces an `:authority` that is not a valid URI authority with `localhost` (what
//! grpc-go and Kubernetes send over UDS), and re-encodes the block with its own encoder
//! (mirrored by h2's decoder). Every other frame passes through untouched, as does the whole
//! server-to-client direction.
//!
//! The connection's first header block decides: when its `:authority` is valid (tonic,
//! grpc-go, every client but C-core) the connection is passed through untouched from then on,
//! with no HPACK work per request; HPACK decoding costs more than the rest of a Workload API
//! call. A gRPC channel keeps one authority for all its calls, so a client that starts valid
//! stays valid. Hand-written framing because no crate offers a header-rewriting
//! HTTP/2 shim; HPACK itself comes from `loona-hpack`.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;

const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// h2's default SETTINGS_MAX_FRAME_SIZE, which tonic keeps: frames we emit stay within it.
const MAX_FRAME_SIZE: usize = 16_384;
/// Largest header block we buffer (h2's default max header list size is 16 KiB decoded).
const MAX_HEADER_BLOCK: usize = 64 * 1024;
/// The dynamic table size h2 advertises by default (SETTINGS_HEADER_TABLE_SIZE).
const HEADER_TABLE_SIZE: usize = 4096;

/// A header block being collected from HEADERS + CONTINUATION frames.
struct PendingBlock {
    stream_id: [u8; 4],
    flags: u8,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
    /// The frames as received, forwarded as they are if the connection needs no rewrite.
    raw: Vec<u8>,
}

/// What the connection's first header block showed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// No header block seen yet.
    Undecided,
    /// Its `:authority` needed fixing: every block is decoded and re-encoded.
    Rewrite,
    /// It was valid: every byte passes through untouched (h2's decoder mirrors the client's
    /// encoder directly, so we cannot start re-encoding later).
    PassThrough,
}

/// The frame-level rewriter; I/O-free so it can be tested on bytes.
struct Rewriter {
    preface_left: usize,
    mode: Mode,
    decoder: loona_hpack::Decoder<'static>,
    encoder: loona_hpack::Encoder<'static>,
    pending: Option<PendingBlock>,
}

impl Rewriter {
    fn new() -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(HEADER_TABLE_SIZE);
        Self {
            preface_left: PREFACE_LEN,
            mode: Mode::Undecided,
            decoder,
            encoder: loona_hpack::Encoder::new(),
            pending: None,
        }
    }

    /// Moves every complete unit (preface bytes, frames) from `input` to `out`, rewriting
    /// header blocks; an incomplete frame stays in `input`.
    fn process(&mut self, input: &mut Vec<u8>, out: &mut Vec<u8>) -> io::Result<()> {
        let mut pos = 0;
        if self.preface_left > 0 {
            let n = self.preface_left.min(input.len());
            out.extend_from_slice(&input[..n]);
            self.preface_left -= n;
            pos = n;
        }
        while self.preface_left == 0
            && self.mode != Mode::PassThrough
            && input.len() - pos >= FRAME_HEADER_LEN
        {
            let header = &input[pos..pos + FRAME_HEADER_LEN];
            let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
            if input.len() - pos - FRAME_HEADER_LEN < len {
                break;
            }
            let frame = &input[pos..pos + FRAME_HEADER_LEN + len];
            self.frame(frame, out)?;
            pos += FRAME_HEADER_LEN + len;
        }
        if self.mode == Mode::PassThrough {
            out.extend_from_slice(&input[pos..]);
            pos = input.len();
        }
        input.drain(..pos);
        Ok(())
    }

    fn passes_through(&self) -> bool {
        self.mode == Mode::PassThrough
    }

    fn frame(&mut self, frame: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        let (kind, flags) = (frame[3], frame[4]);
        let stream_id = [frame[5], frame[6], frame[7], frame[8]];
        let payload = &frame[FRAME_HEADER_LEN..];
        match (kind, self.pending.as_mut()) {
            (HEADERS, None) => {
                let mut body = payload;
                let mut pad = 0;
                if flags & PADDED != 0 {
                    pad = *body
                        .first()
                        .ok_or_else(|| invalid("HEADERS without pad length"))?
                        as usize;
                    body = &body[1..];
                }
                let mut priority = None;
                if flags & PRIORITY != 0 {
                    let p: [u8; 5] = body
                        .get(..5)
                        .and_then(|p| p.try_into().ok())
                        .ok_or_else(|| invalid("HEADERS too short for its priority"))?;
                    priority = Some(p);
                    body = &body[5..];
                }
                let fragment = body
                    .get(
                        ..body
                            .len()
                            .checked_sub(pad)
                            .ok_or_else(|| invalid("bad padding"))?,
                    )
                    .ok_or_else(|| invalid("bad padding"))?;
                self.pending = Some(PendingBlock {
                    stream_id,
                    flags,
                    priority,
                    fragment: fragment.to_vec(),
                    raw: frame.to_vec(),
                });
            }
            (CONTINUATION, Some(block)) if block.stream_id == stream_id => {
                block.fragment.extend_from_slice(payload);
                block.raw.extend_from_slice(frame);
                if block.fragment.len() > MAX_HEADER_BLOCK {
                    return Err(invalid("header block too large"));
                }
                block.flags |= flags & END_HEADERS;
            }
            (_, Some(_)) => return Err(invalid("frame interleaved with a header block")),
            (_, None) => {
                out.extend_from_slice(frame);
                return Ok(());
            }
        }
        match self.pending.take() {
            Some(block) if block.flags & END_HEADERS != 0 => self.emit(block, out),
            unfinished => {
                self.pending = unfinished;
                Ok(())
            }
        }
    }

    /// Decodes the block, fixes `:authority`, and writes it re-encoded as HEADERS
    /// (+ CONTINUATION when it exceeds a frame).
    fn emit(&mut self, block: PendingBlock, out: &mut Vec<u8>) -> io::Result<()> {
        let mut headers = self
            .decoder
            .decode(&block.fragment)
            .map_err(|e| invalid(&format!("HPACK decoding failed: {e}")))?;
        let mut fixed = false;
        for (name, value) in &mut headers {
            if name.as_slice() == b":authority"
                && http::uri::Authority::try_from(value.as_slice()).is_err()
            {
                *value = b"localhost".to_vec();
                fixed = true;
            }
        }
        if self.mode == Mode::Undecided {
            if !fixed {
                self.mode = Mode::PassThrough;
                out.extend_from_slice(&block.raw);
                return Ok(());
            }
            self.mode = Mode::Rewrite;
        }
        let encoded = self
            .encoder
            .encode(headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));

        let mut prefix = Vec::new();
        if let Some(p) = block.priority {
            prefix.extend_from_slice(&p);
        }
        let first_room = MAX_FRAME_SIZE - prefix.len();
        let (first, mut rest) = encoded.split_at(encoded.len().min(first_room));
        let mut flags = block.flags & (END_STREAM | PRIORITY);
        if rest.is_empty() {
            flags |= END_HEADERS;
        }
        write_frame(out, HEADERS, flags, block.stream_id, &[&prefix, first]);
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at(rest.len().min(MAX_FRAME_SIZE));
            let flags = if tail.is_empty() { END_HEADERS } else { 0 };
            write_frame(out, CONTINUATION, flags, block.stream_id, &[chunk]);
            rest = tail;
        }
        Ok(())
    }
}

fn write_frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream_id: [u8; 4], parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    // `len` is at most MAX_FRAME_SIZE (2^14), so it fits the 24-bit length field.
    out.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream_id);
    for p in parts {
        out.extend_from_slice(p);
    }
}

fn invalid(reason: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("HTTP/2 header rewrite: {reason}"),
    )
}

/// A Unix stream whose incoming HTTP/2 header blocks get a valid `:authority`.
pub(super) struct AuthorityFix {
    inner: UnixStream,
    rewriter: Rewriter,
    input: Vec<u8>,
    out: Vec<u8>,
    out_pos: usize,
    eof: bool,
}

impl AuthorityFix {
    pub(super) fn new(inner: UnixStream) -> Self {
        Self {
            inner,
            rewriter: Rewriter::new(),
            input: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            eof: false,
        }
    }
}

impl AsyncRead for AuthorityFix {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.out_pos < this.out.len() {
                let n = buf.remaining().min(this.out.len() - this.out_pos);
                buf.put_slice(&this.out[this.out_pos..this.out_pos + n]);
                this.out_pos += n;
                if this.out_pos == this.out.len() {
                    this.out.clear();
                    this.out_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            if this.rewriter.passes_through() && this.input.is_empty() {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            let mut chunk = [0u8; 8192];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                // The peer closed; hand over any partial frame and let h2 judge it.
                this.eof = true;
                this.out.append(&mut this.input);
                continue;
            }
            this.input.extend_from_slice(read.filled());
            this.rewriter.process(&mut this.input, &mut this.out)?;
        }
    }
}

impl AsyncWrite for AuthorityFix {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn headers_frame(block: &[u8], flags: u8, stream: u8) -> Vec<u8> {
        let mut out = Vec::new();
        write_frame(&mut out, HEADERS, flags, [0, 0, 0, stream], &[block]);
        out
    }

    /// Decodes the header blocks of the frames in `bytes` (after the preface) with a fresh
    /// decoder, as h2 would.
    fn decode_all(bytes: &[u8]) -> Vec<Vec<(String, String)>> {
        let mut decoder = loona_hpack::Decoder::new();
        let mut out = Vec::new();
        let mut pos = PREFACE_LEN;
        let mut block = Vec::new();
        while pos < bytes.len() {
            let len = u32::from_be_bytes([0, bytes[pos], bytes[pos + 1], bytes[pos + 2]]) as usize;
            let (kind, flags) = (bytes[pos + 3], bytes[pos + 4]);
            let mut payload = &bytes[pos + 9..pos + 9 + len];
            assert_eq!(flags & PADDED, 0, "we never emit padding");
            if kind == HEADERS && flags & PRIORITY != 0 {
                payload = &payload[5..];
            }
            if kind == HEADERS || kind == CONTINUATION {
                block.extend_from_slice(payload);
                if flags & END_HEADERS != 0 {
                    let h = decoder.decode(&block).unwrap();
                    out.push(
                        h.into_iter()
                            .map(|(n, v)| {
                                (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap())
                            })
                            .collect(),
                    );
                    block.clear();
                }
            }
            pos += 9 + len;
        }
        out
    }

    #[test]
    fn replaces_invalid_authority_and_keeps_the_rest() {
        let mut client = loona_hpack::Encoder::new();
        let req = |authority: &'static str| {
            vec![
                (&b":method"[..], &b"POST"[..]),
                (b":path", b"/SpiffeWorkloadAPI/FetchX509SVID"),
                (b":authority", authority.as_bytes()),
                (b"workload.spiffe.io", b"true"),
            ]
        };
        let mut wire = PREFACE.to_vec();
        // A SETTINGS frame passes through untouched.
        write_frame(&mut wire, 0x4, 0, [0; 4], &[&[0, 3, 0, 0, 0, 100]]);
        let first = client.encode(req("tmp%2Fsigil%2Fapi.sock"));
        wire.extend(headers_frame(&first, END_HEADERS, 1));
        // Second request: the client's encoder now refers to its dynamic table.
        let second = client.encode(req("tmp%2Fsigil%2Fapi.sock"));
        wire.extend(headers_frame(&second, END_HEADERS | END_STREAM, 3));
        let valid = client.encode(req("example.org:443"));
        wire.extend(headers_frame(&valid, END_HEADERS, 5));

        // Feed it in awkward pieces, as a socket would.
        let mut rewriter = Rewriter::new();
        let (mut input, mut out) = (Vec::new(), Vec::new());
        for piece in wire.chunks(7) {
            input.extend_from_slice(piece);
            rewriter.process(&mut input, &mut out).unwrap();
        }
        assert!(input.is_empty());
        assert!(
            !rewriter.passes_through(),
            "a fixed connection stays rewritten"
        );
        assert_eq!(&out[..PREFACE_LEN], PREFACE);
        assert_eq!(
            &out[PREFACE_LEN..PREFACE_LEN + 15],
            &wire[PREFACE_LEN..PREFACE_LEN + 15]
        );

        let blocks = decode_all(&out);
        assert_eq!(blocks.len(), 3);
        let authority = |b: &Vec<(String, String)>| {
            b.iter()
                .find(|(n, _)| n == ":authority")
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        assert_eq!(authority(&blocks[0]), "localhost");
        assert_eq!(authority(&blocks[1]), "localhost");
        assert_eq!(authority(&blocks[2]), "example.org:443");
        assert!(blocks[1].contains(&("workload.spiffe.io".into(), "true".into())));
        // END_STREAM survives the rewrite.
        let second_frame_flags = {
            let first_len = u32::from_be_bytes([0, out[39], out[40], out[41]]) as usize;
            out[39 + 9 + first_len + 4]
        };
        assert_eq!(second_frame_flags & END_STREAM, END_STREAM);
    }

    #[test]
    fn valid_first_authority_passes_the_connection_through_untouched() {
        let mut client = loona_hpack::Encoder::new();
        let req = |authority: &'static str| {
            vec![
                (&b":method"[..], &b"POST"[..]),
                (b":authority", authority.as_bytes()),
            ]
        };
        let mut wire = PREFACE.to_vec();
        write_frame(&mut wire, 0x4, 0, [0; 4], &[&[0, 3, 0, 0, 0, 100]]);
        let first = client.encode(req("localhost"));
        // Split over HEADERS + CONTINUATION: the raw frames are what goes out.
        let (a, b) = first.split_at(2);
        write_frame(&mut wire, HEADERS, 0, [0, 0, 0, 1], &[a]);
        write_frame(&mut wire, CONTINUATION, END_HEADERS, [0, 0, 0, 1], &[b]);
        write_frame(&mut wire, 0x0, 0x1, [0, 0, 0, 1], &[b"data"]);
        let second = client.encode(req("localhost"));
        wire.extend(headers_frame(&second, END_HEADERS, 3));

        let mut rewriter = Rewriter::new();
        let (mut input, mut out) = (Vec::new(), Vec::new());
        for piece in wire.chunks(5) {
            input.extend_from_slice(piece);
            rewriter.process(&mut input, &mut out).unwrap();
        }
        assert!(input.is_empty());
        assert!(rewriter.passes_through());
        assert_eq!(out, wire, "byte for byte");
        assert_eq!(decode_all(&out).len(), 2);
    }

    #[test]
    fn joins_continuations_and_strips_padding() {
        let mut client = loona_hpack::Encoder::new();
        let block = client.encode(vec![
            (&b":method"[..], &b"POST"[..]),
            (b":authority", b"%2Fbad"),
            (b"x-big", &[b'a'; 100][..]),
        ]);
        let (a, b) = block.split_at(10);
        let mut wire = PREFACE.to_vec();
        // HEADERS with padding and priority, then a CONTINUATION.
        let mut payload = vec![3u8];
        payload.extend_from_slice(&[0, 0, 0, 0, 16]);
        payload.extend_from_slice(a);
        payload.extend_from_slice(&[0, 0, 0]);
        write_frame(
            &mut wire,
            HEADERS,
            PADDED | PRIORITY,
            [0, 0, 0, 1],
            &[&payload],
        );
        write_frame(&mut wire, CONTINUATION, END_HEADERS, [0, 0, 0, 1], &[b]);

        let mut rewriter = Rewriter::new();
        let (mut input, mut out) = (wire, Vec::new());
        rewriter.process(&mut input, &mut out).unwrap();
        let blocks = decode_all(&out);
        assert_eq!(blocks[0][1], (":authority".into(), "localhost".into()));
        assert_eq!(blocks[0][2].1.len(), 100);
        assert_eq!(
            out[PREFACE_LEN + 4],
            PRIORITY | END_HEADERS,
            "priority kept"
        );
        assert_eq!(&out[PREFACE_LEN + 9..PREFACE_LEN + 14], &[0, 0, 0, 0, 16]);
    }

    #[test]
    fn interleaved_frame_is_an_error() {
        let mut client = loona_hpack::Encoder::new();
        let block = client.encode(vec![(&b":method"[..], &b"POST"[..])]);
        let mut wire = PREFACE.to_vec();
        wire.extend(headers_frame(&block, 0, 1));
        write_frame(&mut wire, 0x0, 0, [0, 0, 0, 1], &[b"data"]);
        let mut rewriter = Rewriter::new();
        assert!(rewriter.process(&mut wire, &mut Vec::new()).is_err());
    }
}
