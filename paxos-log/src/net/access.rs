//! Access control: the first bytes of every connection prove that the
//! client belongs to the cluster.
//!
//! A cluster has an id and a shared secret (`kvctl cluster init` generates
//! both into the cluster file; every node and every `kvctl` reads them
//! from there). When [`NetLimits::access`](crate::NetLimits::access) holds
//! an [`AccessKey`], a client opens each connection with a hello before any
//! RPC frame, and a server reads that hello before anything else and
//! answers with one status byte:
//!
//! ```text
//!  client ─► "SKVA" | version (1) | id length (1) | cluster id | secret length (1) | secret
//!  server ─► 0 accepted | 1 another cluster | 2 wrong secret | 3 not a hello
//! ```
//!
//! On a refusal the server logs the peer and the reason, counts it, and
//! closes that connection only. A client without a key (or from a build
//! that predates access control) sends an RPC frame first, which is not a
//! hello, and is refused the same way. The secret travels as it is: on a
//! network where others can read the traffic, it is only as private as the
//! connection (TLS is what protects it there).
//!
//! Every service shares this: the log's peer transport, the controller's
//! and the groups' client services, through [`crate::net::codec`]'s
//! `connect_framed` and [`crate::net::service`]'s connection tasks.

use std::fmt;
use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The hello's first bytes.
const MAGIC: &[u8; 4] = b"SKVA";
/// The hello's format.
const VERSION: u8 = 1;
/// Longest cluster id, in bytes.
pub const CLUSTER_ID_BYTES_MAX: usize = 64;
/// Longest secret, in bytes.
pub const SECRET_BYTES_MAX: usize = 128;
/// How long either side waits for the other's part of the handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// A cluster's identity and shared secret.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessKey {
    cluster_id: String,
    secret: Vec<u8>,
}

impl fmt::Debug for AccessKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secret: keys end up in logged configurations.
        f.debug_struct("AccessKey")
            .field("cluster_id", &self.cluster_id)
            .finish_non_exhaustive()
    }
}

impl AccessKey {
    /// A key, if both parts are non-empty and within their limits.
    pub fn new(cluster_id: impl Into<String>, secret: impl Into<Vec<u8>>) -> Result<Self, String> {
        let (cluster_id, secret) = (cluster_id.into(), secret.into());
        if cluster_id.is_empty() || cluster_id.len() > CLUSTER_ID_BYTES_MAX {
            return Err(format!(
                "the cluster id must have 1 to {CLUSTER_ID_BYTES_MAX} bytes, not {}",
                cluster_id.len()
            ));
        }
        if secret.is_empty() || secret.len() > SECRET_BYTES_MAX {
            return Err(format!(
                "the cluster secret must have 1 to {SECRET_BYTES_MAX} bytes, not {}",
                secret.len()
            ));
        }
        Ok(AccessKey { cluster_id, secret })
    }

    /// The cluster id.
    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    fn hello(&self) -> Vec<u8> {
        let mut hello = Vec::with_capacity(7 + self.cluster_id.len() + self.secret.len());
        hello.extend_from_slice(MAGIC);
        hello.push(VERSION);
        hello.push(length_byte(self.cluster_id.len()));
        hello.extend_from_slice(self.cluster_id.as_bytes());
        hello.push(length_byte(self.secret.len()));
        hello.extend_from_slice(&self.secret);
        hello
    }
}

/// A length as the hello's one length byte.
fn length_byte(len: usize) -> u8 {
    // `AccessKey::new` bounds both lengths well below 256.
    debug_assert!(
        len <= usize::from(u8::MAX),
        "length {len} checked by AccessKey::new"
    );
    u8::try_from(len).unwrap_or(u8::MAX)
}

/// The status byte that tells a plaintext client the server wants TLS.
const STATUS_TLS_REQUIRED: u8 = 4;

/// Whether the first bytes waiting on `stream` are this module's hello in
/// the clear (a client without TLS), looked at without consuming them, for
/// at most [`HANDSHAKE_TIMEOUT`].
pub(crate) async fn is_plaintext_hello(stream: &tokio::net::TcpStream) -> bool {
    let peek = async {
        let mut head = [0u8; 4];
        loop {
            match stream.peek(&mut head).await {
                // A TLS record starts with its content type (22), never 'S'.
                Ok(n) if n > 0 && head[0] != MAGIC[0] => return false,
                Ok(n) if n >= MAGIC.len() => return &head == MAGIC,
                // End of stream, or an error: TLS will fail on it anyway.
                Ok(0) | Err(_) => return false,
                // A partial head: wait for more.
                Ok(_) => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, peek)
        .await
        .unwrap_or(false)
}

/// Answers a plaintext hello with "TLS required" (best effort).
pub(crate) async fn refuse_plaintext(stream: &mut tokio::net::TcpStream) {
    let _ = tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.write_u8(STATUS_TLS_REQUIRED)).await;
}

/// Why a server refused a connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The hello names another cluster.
    #[error("it belongs to another cluster ({0:?})")]
    OtherCluster(String),
    /// Right cluster, wrong secret.
    #[error("wrong secret for this cluster")]
    WrongSecret,
    /// The first bytes are not a hello (a client without the cluster's
    /// key, or not a shardkv client at all).
    #[error("no access handshake ({0})")]
    NotAHello(String),
}

impl Refusal {
    fn status(&self) -> u8 {
        match self {
            Refusal::OtherCluster(_) => 1,
            Refusal::WrongSecret => 2,
            Refusal::NotAHello(_) => 3,
        }
    }
}

/// Client side: sends the hello on a new connection and waits, at most
/// `timeout`, for the server's answer. Only an explicit refusal (another
/// cluster, a wrong secret, a TLS certificate refused) is
/// [`io::ErrorKind::PermissionDenied`], with a message that says what to
/// fix: a connection that merely ends (a node stopping, restarting, or over
/// its connection limit) is [`io::ErrorKind::ConnectionAborted`], which
/// clients retry elsewhere.
pub async fn offer<S>(stream: &mut S, key: &AccessKey, timeout: Duration) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let exchange = async {
        stream.write_all(&key.hello()).await?;
        // TLS buffers what is written until flushed.
        stream.flush().await?;
        stream.read_u8().await
    };
    let status = match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(status)) => status,
        Ok(Err(cause)) if cause.kind() == io::ErrorKind::UnexpectedEof => {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the server closed the connection during the access handshake (stopping, \
                 or not a node of this cluster: one without access control or without TLS \
                 closes it too)",
            ));
        }
        Ok(Err(cause)) => return Err(crate::net::tls::refusal_or(cause)),
        Err(_) => {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no answer to the access handshake in time",
            ));
        }
    };
    let refused = |why: &str| {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            why.to_string(),
        ))
    };
    match status {
        0 => Ok(()),
        1 => refused(&format!(
            "refused: the server belongs to another cluster than {:?} (check the cluster file)",
            key.cluster_id
        )),
        2 => refused("refused: wrong cluster secret (check the cluster file)"),
        STATUS_TLS_REQUIRED => refused(
            "refused: the cluster requires TLS (use its cluster file, which says `tls = true`, \
             with the certificates under DIR/tls)",
        ),
        _ => refused("refused: the server did not understand the access handshake"),
    }
}

/// Server side: reads a client's hello and answers it. `Ok` lets the
/// connection go on to its RPC frames; a refusal has been answered (as far
/// as the client still listens) and the caller closes the connection.
pub async fn check<S>(stream: &mut S, key: &AccessKey) -> Result<(), Refusal>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let verdict = match tokio::time::timeout(HANDSHAKE_TIMEOUT, read_hello(stream, key)).await {
        Ok(verdict) => verdict,
        Err(_) => Err(Refusal::NotAHello("no hello in time".to_string())),
    };
    let status = verdict.as_ref().map_or_else(Refusal::status, |()| 0);
    // A client that is gone cannot be answered; the verdict stands.
    let answer = async {
        stream.write_u8(status).await?;
        stream.flush().await
    };
    let _ = tokio::time::timeout(HANDSHAKE_TIMEOUT, answer).await;
    verdict
}

async fn read_hello<S>(stream: &mut S, key: &AccessKey) -> Result<(), Refusal>
where
    S: AsyncRead + Unpin,
{
    let broken = |cause: io::Error| Refusal::NotAHello(cause.to_string());
    let mut head = [0u8; 6];
    stream.read_exact(&mut head).await.map_err(broken)?;
    if &head[..4] != MAGIC {
        return Err(Refusal::NotAHello("the first bytes are not a hello".into()));
    }
    if head[4] != VERSION {
        return Err(Refusal::NotAHello(format!("hello version {}", head[4])));
    }
    // A length byte bounds what is read: at most 255 bytes each.
    let mut cluster_id = vec![0u8; usize::from(head[5])];
    stream.read_exact(&mut cluster_id).await.map_err(broken)?;
    let secret_len = stream.read_u8().await.map_err(broken)?;
    let mut secret = vec![0u8; usize::from(secret_len)];
    stream.read_exact(&mut secret).await.map_err(broken)?;
    if cluster_id != key.cluster_id.as_bytes() {
        return Err(Refusal::OtherCluster(
            String::from_utf8_lossy(&cluster_id).into_owned(),
        ));
    }
    if !constant_time_eq(&secret, &key.secret) {
        return Err(Refusal::WrongSecret);
    }
    Ok(())
}

/// Compares without an early exit, so the time taken does not tell how
/// much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_outside_the_limits_are_refused() {
        assert!(AccessKey::new("", b"s".to_vec()).is_err());
        assert!(AccessKey::new("c", Vec::new()).is_err());
        assert!(AccessKey::new("c".repeat(65), b"s".to_vec()).is_err());
        assert!(AccessKey::new("c", vec![1; 129]).is_err());
        let key = AccessKey::new("c", vec![1; 128]).unwrap();
        assert!(!format!("{key:?}").contains("[1"), "Debug hides the secret");
    }

    #[test]
    fn comparison_needs_every_byte() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
