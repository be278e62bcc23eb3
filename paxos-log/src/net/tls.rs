//! Optional mutual TLS on every connection, and the one stream type the
//! transport runs over whether TLS is on or not.
//!
//! A cluster with TLS has its own certificate authority (`kvctl cluster
//! init --tls` makes it): every node and every client holds a certificate
//! signed by it. Both sides check the other: a server accepts only clients
//! whose certificate chains to the cluster's CA, and a client accepts only
//! a server whose certificate does, for the name [`SERVER_NAME`] (every
//! certificate of the cluster carries it, so that any node can serve any
//! address). A plaintext client, a client with a certificate from elsewhere
//! or none, fails the handshake: the server logs it, counts it as
//! unauthorized and closes that connection only. The access hello
//! ([`crate::net::access`]) then runs inside the TLS session, so the
//! secret never crosses the network in the clear.
//!
//! Crypto comes from rustls with *ring* as its provider.

use std::fmt;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The name every certificate of a cluster carries and every client
/// checks.
pub const SERVER_NAME: &str = "shardkv.cluster";

/// One party's TLS settings: the cluster's CA and its own certificate and
/// key, for both the client and the server side.
#[derive(Clone)]
pub struct TlsConfig {
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig").finish_non_exhaustive()
    }
}

impl PartialEq for TlsConfig {
    fn eq(&self, other: &Self) -> bool {
        // Built once per process from files: the same settings share the
        // same `Arc`s.
        Arc::ptr_eq(&self.client, &other.client) && Arc::ptr_eq(&self.server, &other.server)
    }
}

impl Eq for TlsConfig {}

impl TlsConfig {
    /// Settings from PEM files: the cluster's CA certificate, this party's
    /// certificate (chain) and its private key. Errors name the file and
    /// what is wrong with it.
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<TlsConfig, String> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))
        };
        TlsConfig::from_pem(&read(ca)?, &read(cert)?, &read(key)?).map_err(|e| {
            format!(
                "{e} (TLS files: CA {}, certificate {}, key {})",
                ca.display(),
                cert.display(),
                key.display()
            )
        })
    }

    /// Settings from PEM texts (see [`TlsConfig::load`]).
    pub fn from_pem(ca_pem: &[u8], cert_pem: &[u8], key_pem: &[u8]) -> Result<TlsConfig, String> {
        let mut roots = RootCertStore::empty();
        let mut any = false;
        for ca in CertificateDer::pem_slice_iter(ca_pem) {
            let ca = ca.map_err(|e| format!("the CA certificate is not PEM: {e}"))?;
            roots
                .add(ca)
                .map_err(|e| format!("the CA certificate is not usable: {e}"))?;
            any = true;
        }
        if !any {
            return Err("the CA file holds no certificate".into());
        }
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("the certificate is not PEM: {e}"))?;
        if chain.is_empty() {
            return Err("the certificate file holds no certificate".into());
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| format!("the private key is not a PEM key: {e}"))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = Arc::new(roots);
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(&provider))
                .build()
                .map_err(|e| format!("client verification: {e}"))?;
        let server = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS versions: {e}"))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| format!("the certificate and key do not make a server: {e}"))?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS versions: {e}"))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| format!("the certificate and key do not make a client: {e}"))?;
        Ok(TlsConfig {
            client: Arc::new(client),
            server: Arc::new(server),
        })
    }

    /// Client side: the TLS handshake on a new connection.
    pub(crate) async fn connect(&self, stream: TcpStream) -> io::Result<NetStream> {
        let name = ServerName::try_from(SERVER_NAME)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let connector = tokio_rustls::TlsConnector::from(Arc::clone(&self.client));
        let stream = connector.connect(name, stream).await.map_err(refusal_or)?;
        Ok(NetStream::Client(Box::new(stream)))
    }

    /// Server side: the TLS handshake on an accepted connection.
    pub(crate) async fn accept(&self, stream: TcpStream) -> io::Result<NetStream> {
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&self.server));
        let stream = acceptor.accept(stream).await?;
        Ok(NetStream::Server(Box::new(stream)))
    }
}

/// `error` as a refusal ([`io::ErrorKind::PermissionDenied`], saying what
/// to check) if TLS itself refused (a certificate not from the cluster's
/// CA, an alert from the server); otherwise as it is (a reset or a closed
/// connection stays retryable).
pub(crate) fn refusal_or(error: io::Error) -> io::Error {
    let tls = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .map(ToString::to_string);
    match tls {
        Some(cause) => io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "TLS handshake failed: {cause} (are this client's certificate and the server's \
                 both from this cluster's CA? check the cluster file and DIR/tls)"
            ),
        ),
        None => error,
    }
}

/// A connection, in the clear or in TLS.
#[derive(Debug)]
pub enum NetStream {
    /// No TLS.
    Plain(TcpStream),
    /// Our side connected.
    Client(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// Our side accepted.
    Server(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl AsyncRead for NetStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            NetStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            NetStream::Client(s) => Pin::new(s).poll_read(cx, buf),
            NetStream::Server(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for NetStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            NetStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            NetStream::Client(s) => Pin::new(s).poll_write(cx, buf),
            NetStream::Server(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            NetStream::Plain(s) => Pin::new(s).poll_flush(cx),
            NetStream::Client(s) => Pin::new(s).poll_flush(cx),
            NetStream::Server(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            NetStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            NetStream::Client(s) => Pin::new(s).poll_shutdown(cx),
            NetStream::Server(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
