//! permessage-deflate (RFC 7692): negotiation from the client's
//! `Sec-WebSocket-Extensions` offers, sans-IO.
//!
//! The server always answers `server_no_context_takeover`: every message
//! it sends is compressed from an empty window, so one compressed copy of a
//! broadcast batch can be shared by every subscriber that negotiated
//! compression (one deflate per batch, not one per subscriber).
//!
//! It also answers `client_no_context_takeover` (RFC 7692 §7.1.1.2 lets a
//! server include it whether or not the client offered it; clients must
//! honour it): every message a client sends then inflates from an empty
//! window, so one inflater per worker serves every connection and no
//! connection keeps a 32 KiB window plus inflate state alive between
//! messages. [`DeflateSettings::client_no_context_takeover`] can turn this
//! off (then each connection needs its own inflater).
//!
//! Window sizes: we inflate with a 15-bit window, which decodes any client
//! window, so `client_max_window_bits` (with or without a value) is accepted
//! and never answered. Our deflater's window is
//! [`DeflateSettings::server_window_bits`] (9..=15; zlib cannot write raw
//! deflate with an 8-bit window): an offer whose `server_max_window_bits` is
//! below it is declined (the next offer is tried), never accepted and
//! violated.
//!
//! Offers with unknown, duplicate or invalid parameters are declined as
//! §7 requires; a syntactically broken header declines compression for the
//! connection (the handshake still succeeds, uncompressed).

use super::error::ProtocolError;

/// The extension's token.
pub const EXTENSION: &str = "permessage-deflate";

/// Smallest window zlib's raw deflate can honour (it turns 8 into 9).
pub const MIN_SERVER_WINDOW_BITS: u8 = 9;
/// The largest window (32 KiB), the deflate format's maximum.
pub const MAX_WINDOW_BITS: u8 = 15;

/// What this server is willing to negotiate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeflateSettings {
    /// Window of our deflater, 9..=15 (values outside are clamped).
    pub server_window_bits: u8,
    /// Answer `client_no_context_takeover` even when the client did not
    /// offer it (lets one inflater per worker serve all connections).
    pub client_no_context_takeover: bool,
    /// Deflate level of what we send (1..=9).
    pub level: u32,
    /// Messages shorter than this are sent uncompressed.
    pub min_bytes: usize,
}

impl Default for DeflateSettings {
    fn default() -> Self {
        DeflateSettings {
            server_window_bits: MAX_WINDOW_BITS,
            client_no_context_takeover: true,
            level: 1,
            min_bytes: 64,
        }
    }
}

/// The parameters in force on a connection after negotiation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// Window bits our deflater uses (and answered when below 15 or when
    /// the client asked for a limit).
    pub server_window_bits: u8,
    /// Whether `server_max_window_bits` appears in the answer.
    answer_server_window: bool,
    /// The client resets its compressor after each message: its messages
    /// inflate from an empty window (a shared inflater can be used).
    pub client_no_context_takeover: bool,
}

impl Negotiated {
    /// The `Sec-WebSocket-Extensions` value to answer with.
    pub fn response_value(&self) -> String {
        let mut s = String::from("permessage-deflate; server_no_context_takeover");
        if self.client_no_context_takeover {
            s.push_str("; client_no_context_takeover");
        }
        if self.answer_server_window {
            s.push_str("; server_max_window_bits=");
            s.push_str(&self.server_window_bits.to_string());
        }
        s
    }
}

/// One extension element of the header: its name and parameters
/// (values unquoted).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Offer {
    name: String,
    params: Vec<(String, Option<String>)>,
}

/// RFC 7230 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A cursor over the header value, for the RFC 6455 §9.1 grammar:
/// `extension-list = 1#( token *( ";" token [ "=" (token | quoted-string) ] ) )`.
struct Lexer<'a> {
    s: &'a [u8],
    i: usize,
}

impl Lexer<'_> {
    fn skip_ws(&mut self) {
        while matches!(self.s.get(self.i), Some(b' ' | b'\t')) {
            self.i += 1;
        }
    }
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn token(&mut self) -> Option<String> {
        let start = self.i;
        while self.peek().is_some_and(is_tchar) {
            self.i += 1;
        }
        (self.i > start).then(|| String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }
    fn quoted(&mut self) -> Option<String> {
        // At the opening quote.
        self.i += 1;
        let mut out = Vec::new();
        loop {
            match self.peek()? {
                b'"' => {
                    self.i += 1;
                    return Some(String::from_utf8_lossy(&out).into_owned());
                }
                b'\\' => {
                    self.i += 1;
                    out.push(self.peek()?);
                    self.i += 1;
                }
                b => {
                    out.push(b);
                    self.i += 1;
                }
            }
        }
    }
}

/// Parses a whole `Sec-WebSocket-Extensions` value (several header lines
/// joined with `,`). `None` when it does not follow the grammar. Empty list
/// elements (`a,,b`) are allowed, as HTTP's `#` rule does.
fn parse_offers(value: &str) -> Option<Vec<Offer>> {
    let mut lx = Lexer {
        s: value.as_bytes(),
        i: 0,
    };
    let mut offers = Vec::new();
    loop {
        lx.skip_ws();
        match lx.peek() {
            None => return Some(offers),
            Some(b',') => {
                lx.i += 1;
                continue;
            }
            _ => {}
        }
        let name = lx.token()?;
        let mut params = Vec::new();
        loop {
            lx.skip_ws();
            match lx.peek() {
                None | Some(b',') => break,
                Some(b';') => {
                    lx.i += 1;
                    lx.skip_ws();
                    let p = lx.token()?;
                    lx.skip_ws();
                    let v = if lx.peek() == Some(b'=') {
                        lx.i += 1;
                        lx.skip_ws();
                        Some(if lx.peek() == Some(b'"') {
                            lx.quoted()?
                        } else {
                            lx.token()?
                        })
                    } else {
                        None
                    };
                    params.push((p, v));
                }
                Some(_) => return None,
            }
        }
        offers.push(Offer { name, params });
    }
}

/// A window-bits value: an integer 8..=15 without leading zeros (§7.1.2).
fn window_bits(v: &str) -> Option<u8> {
    if v.is_empty() || v.len() > 2 || v.starts_with('0') || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u8 = v.parse().ok()?;
    (8..=15).contains(&n).then_some(n)
}

/// Checks one permessage-deflate offer and, if we can honour it, the
/// parameters we answer. `None` declines it.
fn accept_offer(offer: &Offer, settings: &DeflateSettings) -> Option<Negotiated> {
    let ours = settings
        .server_window_bits
        .clamp(MIN_SERVER_WINDOW_BITS, MAX_WINDOW_BITS);
    let mut seen = [false; 4];
    let mut client_nct = false;
    let mut server_max: Option<u8> = None;
    for (name, value) in &offer.params {
        let slot = match name.as_str() {
            "server_no_context_takeover" => 0,
            "client_no_context_takeover" => 1,
            "server_max_window_bits" => 2,
            "client_max_window_bits" => 3,
            _ => return None, // unknown parameter (§7: decline)
        };
        if std::mem::replace(&mut seen[slot], true) {
            return None; // duplicate
        }
        match slot {
            0 | 1 => {
                if value.is_some() {
                    return None;
                }
                client_nct |= slot == 1;
            }
            2 => server_max = Some(window_bits(value.as_deref()?)?),
            _ => {
                if let Some(v) = value {
                    window_bits(v)?;
                }
            }
        }
    }
    if server_max.is_some_and(|n| n < ours) {
        return None; // we cannot keep our window that small
    }
    Some(Negotiated {
        server_window_bits: ours,
        answer_server_window: server_max.is_some() || ours < MAX_WINDOW_BITS,
        client_no_context_takeover: client_nct || settings.client_no_context_takeover,
    })
}

/// Picks the first permessage-deflate offer (client preference order) we
/// can honour. `offers` is the `Sec-WebSocket-Extensions` value (several
/// header lines joined with `,`). `None`: no compression on this
/// connection (no offer, none acceptable, or a malformed header).
pub fn negotiate(offers: &str, settings: &DeflateSettings) -> Option<Negotiated> {
    parse_offers(offers)?
        .iter()
        .filter(|o| o.name.eq_ignore_ascii_case(EXTENSION))
        .find_map(|o| accept_offer(o, settings))
}

/// The bytes a sender strips from the end of each compressed message
/// (§7.2.1) and the receiver appends back before inflating its end.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Output grows by at most this much at a time (the message limit caps it).
const INFLATE_STEP: usize = 16 * 1024;

/// Raw-deflate decompression of messages, bounded by a size limit.
///
/// One serves every connection of a worker when the clients do not take
/// their context over (`client_no_context_takeover`), for messages that
/// arrive in one frame; a message compressed across several frames, or a
/// connection with context takeover, needs one of its own while it lasts.
pub struct Inflater {
    d: flate2::Decompress,
    /// The client ended its deflate stream (BFINAL) in this message.
    ended: bool,
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inflater")
            .field("ended", &self.ended)
            .finish()
    }
}

impl Default for Inflater {
    fn default() -> Self {
        Inflater::new()
    }
}

impl Inflater {
    /// An inflater with a 15-bit window (decodes every client window).
    pub fn new() -> Self {
        Inflater {
            d: flate2::Decompress::new_with_window_bits(false, MAX_WINDOW_BITS),
            ended: false,
        }
    }

    /// Forgets the window: the next message inflates from scratch.
    pub fn reset(&mut self) {
        self.d.reset(false);
        self.ended = false;
    }

    /// Inflates one frame's compressed payload, appending to `out`, which
    /// never grows past `limit` bytes: output beyond it is
    /// [`ProtocolError::MessageTooLarge`] (a decompression bomb is stopped
    /// with at most `limit` bytes inflated). Corrupt data is
    /// [`ProtocolError::BadCompressedData`].
    pub fn inflate(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        limit: usize,
    ) -> Result<(), ProtocolError> {
        let mut input = input;
        loop {
            if self.ended {
                // Nothing may follow the final block but our own tail.
                return if input.is_empty() {
                    Ok(())
                } else {
                    Err(ProtocolError::BadCompressedData)
                };
            }
            let len = out.len();
            let room = limit.saturating_sub(len).min(INFLATE_STEP.max(len));
            let mut probe = [0u8; 1];
            let before_in = self.d.total_in();
            let before_out = self.d.total_out();
            let status = if room == 0 {
                // At the limit: any further output is one byte too many.
                self.d
                    .decompress(input, &mut probe, flate2::FlushDecompress::Sync)
            } else {
                out.resize(len + room, 0);
                let r = self
                    .d
                    .decompress(input, &mut out[len..], flate2::FlushDecompress::Sync);
                let produced = (self.d.total_out() - before_out) as usize;
                out.truncate(len + produced);
                r
            }
            .map_err(|_| ProtocolError::BadCompressedData)?;
            let consumed = (self.d.total_in() - before_in) as usize;
            let produced = (self.d.total_out() - before_out) as usize;
            if room == 0 && produced > 0 {
                return Err(ProtocolError::MessageTooLarge);
            }
            input = &input[consumed..];
            if status == flate2::Status::StreamEnd {
                self.ended = true;
                continue;
            }
            if input.is_empty() && produced < room.max(1) {
                return Ok(()); // all consumed, output drained
            }
            if consumed == 0 && produced == 0 {
                // No progress with input left and room to write.
                return Err(ProtocolError::BadCompressedData);
            }
        }
    }

    /// Ends a message: inflates the stripped tail (§7.2.2). The caller
    /// resets the inflater afterwards unless the client takes its context
    /// over (and always after a final block, which ends the context).
    pub fn finish(&mut self, out: &mut Vec<u8>, limit: usize) -> Result<(), ProtocolError> {
        if self.ended {
            return Ok(());
        }
        self.inflate(&TAIL, out, limit)
    }

    /// Whether the client ended its stream in the last message (its next
    /// message starts a new context whatever was negotiated).
    pub fn ended(&self) -> bool {
        self.ended
    }
}

/// Raw-deflate compression of outgoing messages with no context takeover
/// (each message from an empty window, as `server_no_context_takeover`
/// promises), so one compressed copy serves every compressing recipient.
/// One per worker is enough.
pub struct Deflater {
    c: flate2::Compress,
}

impl std::fmt::Debug for Deflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Deflater")
    }
}

impl Deflater {
    /// `level` 1..=9 (clamped); `window_bits` as negotiated (9..=15,
    /// clamped: see [`MIN_SERVER_WINDOW_BITS`]).
    pub fn new(level: u32, window_bits: u8) -> Self {
        let bits = window_bits.clamp(MIN_SERVER_WINDOW_BITS, MAX_WINDOW_BITS);
        Deflater {
            c: flate2::Compress::new_with_window_bits(
                flate2::Compression::new(level.clamp(1, 9)),
                false,
                bits,
            ),
        }
    }

    /// Compresses one message into `out` (appended) as its frame payload:
    /// sync-flushed and without the `00 00 ff ff` tail (§7.2.1). `false`
    /// when compression would not make it smaller (then `out` is left as it
    /// was and the message should go uncompressed; RSV1 is per message).
    pub fn compress(&mut self, data: &[u8], out: &mut Vec<u8>) -> bool {
        self.c.reset();
        let start = out.len();
        // Worst case of deflate is a few bytes per 16 KiB block; stop as
        // soon as the output is no smaller than the input.
        let budget = data.len() + 4;
        out.reserve(budget.min(data.len() / 2 + 64));
        let mut input = data;
        loop {
            if out.len() - start >= budget {
                out.truncate(start);
                return false;
            }
            if out.len() == out.capacity() {
                out.reserve((out.len() - start).max(64));
            }
            let before_in = self.c.total_in();
            if self
                .c
                .compress_vec(input, out, flate2::FlushCompress::Sync)
                .is_err()
            {
                out.truncate(start);
                return false;
            }
            input = &input[(self.c.total_in() - before_in) as usize..];
            // Done once all input is in and the flush fit in the space
            // given (zlib stops short only when the output is full; a
            // repeated flush with nothing new writes nothing).
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
        }
        if !out[start..].ends_with(&TAIL) || out.len() - start - TAIL.len() >= data.len() {
            out.truncate(start);
            return false;
        }
        out.truncate(out.len() - TAIL.len());
        true
    }
}

/// What compressing for sending did (added to the worker's metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CompressStats {
    /// Messages sent compressed.
    pub messages: u64,
    /// Their payload bytes before compression.
    pub before: u64,
    /// Their payload bytes after compression.
    pub after: u64,
    /// Messages of at least `min_bytes` left uncompressed because deflate
    /// would not shrink them.
    pub incompressible: u64,
}

/// Compresses one message of `data` (`opcode` text or binary) into a
/// complete, unfragmented server frame with RSV1 set, when it is at least
/// `min_bytes` long and compression makes it smaller; `None` otherwise
/// (send it plain: RSV1 is per message).
pub fn compress_message(
    opcode: super::frame::OpCode,
    data: &[u8],
    deflater: &mut Deflater,
    min_bytes: usize,
    stats: &mut CompressStats,
) -> Option<Vec<u8>> {
    use super::frame::encode_header;
    if data.len() < min_bytes {
        return None;
    }
    // Room for the longest header (10 bytes) in front of the payload.
    let mut out = vec![0u8; 10];
    if !deflater.compress(data, &mut out) {
        stats.incompressible += 1;
        return None;
    }
    let len = out.len() - 10;
    let header = encode_header(true, opcode, len, None);
    let hb = header.as_bytes();
    let start = 10 - hb.len();
    out[start..10].copy_from_slice(hb);
    out[start] |= 0x40;
    out.drain(..start);
    stats.messages += 1;
    stats.before += data.len() as u64;
    stats.after += len as u64;
    Some(out)
}

/// Re-encodes a batch of complete server frames (as shared with
/// uncompressed recipients) for recipients that negotiated deflate: each
/// single-frame text or binary message of at least `min_bytes` is
/// compressed (RSV1 set); other frames, and messages compression would not
/// shrink, are copied as they are. `None` if the bytes are not whole
/// unmasked frames (a caller bug; send the plain batch).
pub fn compress_frames(
    frames: &[u8],
    deflater: &mut Deflater,
    min_bytes: usize,
    stats: &mut CompressStats,
) -> Option<Vec<u8>> {
    use super::frame::{encode_header, FrameDecoder, OpCode, Role};
    let dec = FrameDecoder::new(Role::Client, usize::MAX >> 2);
    let mut out = Vec::with_capacity(frames.len() / 2 + 16);
    let mut payload = Vec::new();
    let mut pos = 0;
    while pos < frames.len() {
        let h = dec.decode_header(&frames[pos..]).ok()??;
        let end = pos
            .checked_add(h.header_len)?
            .checked_add(usize::try_from(h.payload_len).ok()?)?;
        let body = frames.get(pos + h.header_len..end)?;
        let data = matches!(h.opcode, OpCode::Text | OpCode::Binary);
        payload.clear();
        let candidate = h.fin && data && body.len() >= min_bytes;
        if candidate && deflater.compress(body, &mut payload) {
            let header = encode_header(true, h.opcode, payload.len(), None);
            let hb = header.as_bytes();
            out.push(hb[0] | 0x40);
            out.extend_from_slice(&hb[1..]);
            out.extend_from_slice(&payload);
            stats.messages += 1;
            stats.before += body.len() as u64;
            stats.after += payload.len() as u64;
        } else {
            stats.incompressible += u64::from(candidate);
            out.extend_from_slice(&frames[pos..end]);
        }
        pos = end;
    }
    Some(out)
}

#[cfg(test)]
mod tests;
