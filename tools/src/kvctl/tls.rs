//! The files of a cluster with mutual TLS (`kvctl cluster init --tls`): a
//! certificate authority of its own, a certificate for `kvctl` and one for
//! every node, all signed by it and all naming
//! [`paxos_log::net::tls::SERVER_NAME`].
//!
//! ```text
//! DIR/tls/ca.pem  ca-key.pem         the CA (its key signs the certificates of nodes added later)
//! DIR/tls/client.pem  client-key.pem what kvctl presents
//! DIR/NODE/tls/ca.pem  node.pem  node-key.pem   what the node trusts and presents
//! ```
//!
//! Every file is written like every other `kvctl` file (atomically, mode
//! 0600). Keys are ECDSA P-256, certificates valid from 2025 to 2125 (a
//! local cluster should not stop on an expiry date nobody remembers).

use std::path::Path;

use anyhow::Context;
use paxos_log::net::tls::SERVER_NAME;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use super::cluster::{node_dir, write_atomically};
use crate::cluster_file::{ClusterFile, ClusterNode};

/// The cluster's TLS directory, under its directory.
pub const TLS_DIR: &str = "tls";
/// The CA certificate, in the cluster's and every node's TLS directory.
pub const CA_FILE: &str = "ca.pem";
/// The CA's private key, in the cluster's TLS directory only.
const CA_KEY_FILE: &str = "ca-key.pem";
/// kvctl's certificate and key, in the cluster's TLS directory.
pub const CLIENT_FILE: &str = "client.pem";
/// See [`CLIENT_FILE`].
pub const CLIENT_KEY_FILE: &str = "client-key.pem";
/// A node's certificate and key, in its TLS directory.
pub const NODE_FILE: &str = "node.pem";
/// See [`NODE_FILE`].
pub const NODE_KEY_FILE: &str = "node-key.pem";

/// The CA's name. Fixed (nothing from the cluster file): the CA is rebuilt
/// from its key to sign certificates for nodes added later, and what it
/// signs names it as issuer, which must match `ca.pem` exactly.
const CA_NAME: &str = "shardkv cluster CA";

/// The CA's parameters: the same every time (see [`CA_NAME`]).
fn authority_params() -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.distinguished_name.push(DnType::CommonName, CA_NAME);
    validity(&mut params);
    Ok(params)
}

fn validity(params: &mut CertificateParams) {
    params.not_before = rcgen::date_time_ymd(2025, 1, 1);
    params.not_after = rcgen::date_time_ymd(2125, 1, 1);
}

/// A certificate for a node or a client, signed by the CA.
fn party(name: &str, ca: &Certificate, ca_key: &KeyPair) -> anyhow::Result<(String, String)> {
    let key = KeyPair::generate().context("generating a TLS key")?;
    let mut params = CertificateParams::new(vec![SERVER_NAME.to_string()])?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    validity(&mut params);
    let cert = params
        .signed_by(&key, ca, ca_key)
        .with_context(|| format!("signing the certificate of {name}"))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Makes the CA, kvctl's certificate and every node's, for a new cluster
/// in `dir`.
pub fn create_cluster_tls(dir: &Path, file: &ClusterFile) -> anyhow::Result<()> {
    let key = KeyPair::generate().context("generating the CA key")?;
    let ca = authority_params()?
        .self_signed(&key)
        .context("making the CA certificate")?;
    let tls = dir.join(TLS_DIR);
    write_atomically(&tls.join(CA_KEY_FILE), &key.serialize_pem())?;
    write_atomically(&tls.join(CA_FILE), &ca.pem())?;
    let (cert, client_key) = party("kvctl", &ca, &key)?;
    write_atomically(&tls.join(CLIENT_FILE), &cert)?;
    write_atomically(&tls.join(CLIENT_KEY_FILE), &client_key)?;
    for node in &file.nodes {
        write_node_files(dir, node, &ca, &key)?;
    }
    Ok(())
}

/// Gives `node` its TLS files if the cluster has TLS and the node has none
/// yet (a node added to a running cluster), signed by the CA in `dir`.
pub fn ensure_node_tls(dir: &Path, file: &ClusterFile, node: &ClusterNode) -> anyhow::Result<()> {
    if !file.tls || node_dir(dir, node).join(TLS_DIR).join(NODE_FILE).is_file() {
        return Ok(());
    }
    let key_path = dir.join(TLS_DIR).join(CA_KEY_FILE);
    let key_pem = std::fs::read_to_string(&key_path).with_context(|| {
        format!(
            "reading {} to sign {}'s certificate (it was made by `cluster init --tls`)",
            key_path.display(),
            node.name
        )
    })?;
    let key = KeyPair::from_pem(&key_pem)
        .with_context(|| format!("{} is not a usable key", key_path.display()))?;
    // The same subject and key as the CA certificate on disk: what it signs
    // chains to that certificate.
    let ca = authority_params()?
        .self_signed(&key)
        .context("rebuilding the CA certificate")?;
    write_node_files(dir, node, &ca, &key)
}

fn write_node_files(
    dir: &Path,
    node: &ClusterNode,
    ca: &Certificate,
    ca_key: &KeyPair,
) -> anyhow::Result<()> {
    let tls = node_dir(dir, node).join(TLS_DIR);
    let ca_pem = std::fs::read_to_string(dir.join(TLS_DIR).join(CA_FILE))
        .context("reading the cluster's CA certificate")?;
    let (cert, key) = party(&node.name, ca, ca_key)?;
    write_atomically(&tls.join(CA_FILE), &ca_pem)?;
    write_atomically(&tls.join(NODE_FILE), &cert)?;
    write_atomically(&tls.join(NODE_KEY_FILE), &key)
}
