//! Framing and serialization for every tarpc service of shardkv (the log's
//! peers here, and the controller's and groups' client services, which
//! reuse it): tarpc's serde transport over a `LengthDelimitedCodec` with an
//! explicit maximum frame length, and tokio-serde's `Bincode` with a byte
//! limit, wrapped to check request deadlines before tarpc sees them.

use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::time::Duration;

use bincode::config::{Bounded, WithOtherLimit};
use bincode::{DefaultOptions, Options};
use serde::{Deserialize, Serialize};
use tarpc::serde_transport::{self, Transport};
use tarpc::tokio_serde::formats::Bincode;
use tarpc::tokio_serde::{Deserializer, Serializer};
use tarpc::tokio_util::bytes::{Bytes, BytesMut};
use tarpc::tokio_util::codec::LengthDelimitedCodec;
use tokio::net::TcpStream;

use crate::net::tls::NetStream;

use crate::net::NetLimits;

/// Bytes of a request frame beyond its envelopes: tarpc's request header
/// (deadline, trace context, request id), the group id and the batch's
/// length, with a wide margin.
pub(crate) const REQUEST_OVERHEAD_BYTES: u64 = 1024;

/// The bincode configuration on the wire: tokio-serde's default (varint
/// integers, little endian, no trailing bytes) with a size limit.
type WireOptions = WithOtherLimit<DefaultOptions, Bounded>;

fn wire_options(limits: &NetLimits) -> WireOptions {
    DefaultOptions::new().with_limit(u64::try_from(limits.max_frame_bytes).unwrap_or(u64::MAX))
}

/// Encoded size of `value` on the wire (without its frame's length).
pub(crate) fn wire_size<T: Serialize>(value: &T) -> Option<u64> {
    DefaultOptions::new().serialized_size(value).ok()
}

/// tokio-serde `Bincode` plus, on the server side, a check of the deadline
/// of each incoming request.
#[derive(Clone, Copy)]
pub struct WireCodec {
    options: WireOptions,
    /// Refuse requests whose deadline is further away (server side).
    max_deadline: Option<Duration>,
}

impl std::fmt::Debug for WireCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // bincode's options do not implement `Debug`.
        f.debug_struct("WireCodec")
            .field("max_deadline", &self.max_deadline)
            .finish_non_exhaustive()
    }
}

impl WireCodec {
    /// The codec of a client: encodes requests, decodes responses.
    pub fn client(limits: &NetLimits) -> WireCodec {
        WireCodec {
            options: wire_options(limits),
            max_deadline: None,
        }
    }

    /// The codec of a server: decodes requests (checking their deadline),
    /// encodes responses.
    pub fn server(limits: &NetLimits) -> WireCodec {
        WireCodec {
            options: wire_options(limits),
            max_deadline: Some(limits.max_request_deadline),
        }
    }
}

/// The first fields of a bincode-encoded `tarpc::ClientMessage`: the
/// variant (`Request` is 0, `Cancel` 1), then for a request the deadline
/// (a `Duration`, relative to the sender's clock), the first field of its
/// `Context`. Decoded alone so a deadline that would make tarpc panic is
/// refused first. `tests/net.rs` sends such a request and checks it is
/// refused without a panic (so does the controller's `tests/service.rs`),
/// which also guards this mirror against a
/// change of tarpc's format.
#[derive(Deserialize)]
enum ClientMessageHead {
    Request(Duration),
    Cancel,
}

fn check_deadline(src: &[u8], max: Duration) -> io::Result<()> {
    let head: ClientMessageHead = DefaultOptions::new()
        .allow_trailing_bytes()
        .deserialize(src)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    match head {
        ClientMessageHead::Request(deadline) if deadline > max => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "request deadline {} ms away exceeds the limit of {} ms",
                deadline.as_millis(),
                max.as_millis()
            ),
        )),
        ClientMessageHead::Request(_) | ClientMessageHead::Cancel => Ok(()),
    }
}

impl WireCodec {
    /// Decodes one frame body as the transport does (a server's codec reads
    /// requests, a client's responses), for tools and tests that look at
    /// frames directly.
    pub fn decode<T: for<'de> Deserialize<'de>>(mut self, body: &[u8]) -> io::Result<T> {
        Deserializer::<T>::deserialize(Pin::new(&mut self), &BytesMut::from(body))
    }

    /// Encodes one message as a frame body, as the transport does.
    pub fn encode<T: Serialize>(mut self, message: &T) -> io::Result<Vec<u8>> {
        Serializer::<T>::serialize(Pin::new(&mut self), message).map(|body| body.to_vec())
    }
}

impl<Item> Deserializer<Item> for WireCodec
where
    Item: for<'de> Deserialize<'de>,
{
    type Error = io::Error;

    fn deserialize(self: Pin<&mut Self>, src: &BytesMut) -> io::Result<Item> {
        if let Some(max) = self.max_deadline {
            check_deadline(src, max)?;
        }
        let mut inner = pin!(Bincode::<Item, (), WireOptions>::from(self.options));
        inner.as_mut().deserialize(src)
    }
}

impl<SinkItem> Serializer<SinkItem> for WireCodec
where
    SinkItem: Serialize,
{
    type Error = io::Error;

    fn serialize(self: Pin<&mut Self>, item: &SinkItem) -> io::Result<Bytes> {
        let mut inner = pin!(Bincode::<(), SinkItem, WireOptions>::from(self.options));
        inner.as_mut().serialize(item)
    }
}

/// Frames `stream` for tarpc: length-delimited with the frame limit, then
/// bincode through `codec`.
pub fn framed<Item, SinkItem>(
    stream: NetStream,
    limits: &NetLimits,
    codec: WireCodec,
) -> Transport<NetStream, Item, SinkItem, WireCodec>
where
    Item: for<'de> Deserialize<'de>,
    SinkItem: Serialize,
{
    let framing = LengthDelimitedCodec::builder()
        .max_frame_length(limits.max_frame_bytes)
        .new_framed(stream);
    serde_transport::new(framing, codec)
}

/// Opens a client connection for tarpc: connects to `addr` within
/// `limits.connect_timeout`, turns Nagle off and frames the stream with a
/// client [`WireCodec`]. Every tarpc client of shardkv (the log's peer
/// transport, the controller's clerk) connects through here.
pub async fn connect_framed<Item, SinkItem>(
    addr: SocketAddr,
    limits: &NetLimits,
) -> io::Result<Transport<NetStream, Item, SinkItem, WireCodec>>
where
    Item: for<'de> Deserialize<'de>,
    SinkItem: Serialize,
{
    let stream = tokio::time::timeout(limits.connect_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    // Small request/response frames: latency matters more than packing.
    let _ = stream.set_nodelay(true);
    let mut stream = match &limits.tls {
        None => NetStream::Plain(stream),
        Some(tls) => tokio::time::timeout(limits.connect_timeout, tls.connect(stream))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))?
            .map_err(|e| io::Error::new(e.kind(), format!("{addr}: {e}")))?,
    };
    if let Some(key) = &limits.access {
        crate::net::access::offer(&mut stream, key, limits.connect_timeout)
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("{addr}: {e}")))?;
    }
    Ok(framed(stream, limits, WireCodec::client(limits)))
}
