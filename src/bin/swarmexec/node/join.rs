//! Joining a swarm, and renewing the node's certificate, as SwarmKit's nodes do.
//!
//! Joining: fetch the root CA and check it against the join token's digest; make
//! a key (ECDSA P-256, as SwarmKit's) and a certificate request; ask the manager's
//! CA for a certificate with the token; wait until it is issued. Renewing is the
//! same request over mutual TLS, with no token: the current certificate is the
//! node's credential.

use std::time::Duration;

use rcgen::{CertificateParams, DistinguishedName, KeyPair};
use tonic::transport::Channel;

use super::errors::status;
use super::identity::Identity;
use super::proto::api::{
    self, ca_client::CaClient, issuance_status, node_ca_client::NodeCaClient,
    GetRootCaCertificateRequest, IssueNodeCertificateRequest, NodeCertificateStatusRequest,
};
use super::tls;
use super::token::JoinToken;

/// How long a manager may take to issue a certificate.
const ISSUANCE_TIMEOUT: Duration = Duration::from_secs(60);

/// Joins the swarm of `token` through the manager at `address`.
pub(crate) async fn join(address: &str, token: &JoinToken) -> Result<Identity, String> {
    let unreachable = |e: String| format!("cannot reach manager {address}: {e}");
    let channel = tls::connect(address, tls::unverified()?)
        .await
        .map_err(unreachable)?;
    let root_ca = CaClient::new(channel)
        .get_root_ca_certificate(GetRootCaCertificateRequest {})
        .await
        .map_err(|e| format!("manager {address} gave no root CA: {}", status(&e)))?
        .into_inner()
        .certificate;
    if !token.names_root_ca(&root_ca) {
        return Err(format!(
            "the root CA of the swarm at {address} does not match the join token's \
             digest: the token is for another swarm, or someone is in between"
        ));
    }
    let channel = tls::connect(address, tls::to_managers(&root_ca, None)?)
        .await
        .map_err(unreachable)?;
    issue(channel, token.as_str(), root_ca)
        .await
        .map_err(|e| format!("manager {address} refused to let the node join: {e}"))
}

/// A new certificate for `identity`, from the manager at `address`.
pub(crate) async fn renew(address: &str, identity: &Identity) -> Result<Identity, String> {
    let config = tls::to_managers(&identity.root_ca_pem, Some(identity))?;
    let channel = tls::connect(address, config).await?;
    issue(channel, "", identity.root_ca_pem.clone()).await
}

async fn issue(channel: Channel, token: &str, root_ca: Vec<u8>) -> Result<Identity, String> {
    let key = KeyPair::generate().map_err(|e| format!("cannot make a key: {e}"))?;
    let mut params = CertificateParams::default();
    // The CA decides the subject: the node's id, role and swarm.
    params.distinguished_name = DistinguishedName::new();
    let csr = params
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .map_err(|e| format!("cannot make a certificate request: {e}"))?;
    let mut client = NodeCaClient::new(channel);
    let request = IssueNodeCertificateRequest {
        csr: csr.into_bytes(),
        token: token.to_owned(),
        availability: api::node_spec::Availability::Active as i32,
        ..Default::default()
    };
    let node_id = client
        .issue_node_certificate(request)
        .await
        .map_err(|e| status(&e))?
        .into_inner()
        .node_id;
    let certificate = tokio::time::timeout(ISSUANCE_TIMEOUT, issued(&mut client, &node_id))
        .await
        .map_err(|_| format!("no certificate issued within {ISSUANCE_TIMEOUT:?}"))??;
    Identity::new(key.serialize_pem(), certificate, root_ca)
}

/// The certificate once issued. The manager's status call blocks until the
/// request is decided; a pending answer is asked again after a pause.
async fn issued(client: &mut NodeCaClient<Channel>, node_id: &str) -> Result<String, String> {
    loop {
        let request = NodeCertificateStatusRequest {
            node_id: node_id.to_owned(),
        };
        let response = client
            .node_certificate_status(request)
            .await
            .map_err(|e| status(&e))?
            .into_inner();
        let state = response.status.as_ref().map(|s| s.state());
        let certificate = response.certificate.map(|c| c.certificate);
        match (state, certificate) {
            (Some(issuance_status::State::Issued), Some(cert)) if !cert.is_empty() => {
                return String::from_utf8(cert).map_err(|_| "the certificate is not PEM".into())
            }
            (Some(issuance_status::State::Failed), _) => {
                let why = response.status.map(|s| s.err).unwrap_or_default();
                return Err(format!("the certificate was not issued: {why}"));
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}
