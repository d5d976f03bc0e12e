//! TLS to the managers, as SwarmKit's nodes speak it.
//!
//! Three trust levels, one per stage of a node's life:
//! - before joining, the root CA is fetched over TLS that checks nothing: the
//!   certificate it returns is then checked against the join token's digest,
//!   which is what makes it trusted (as SwarmKit's own `GetRemoteCA` does);
//! - asking for a certificate, the manager must hold a manager certificate of
//!   that root CA;
//! - from then on, every connection is mutual TLS with the node's certificate,
//!   and the manager's must also be of the node's own swarm (its organization).
//!
//! A manager's certificate names the role `swarm-manager` both as a DNS name and
//! as its organizational unit; both are checked.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tonic::transport::{Channel, Endpoint};

use super::errors::chain;
use super::identity::{certificates, Identity, Subject};

/// SwarmKit's role for managers: a DNS name and the OU of their certificates.
pub(crate) const MANAGER_ROLE: &str = "swarm-manager";

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn config_with(
    verifier: Arc<dyn ServerCertVerifier>,
    client: Option<&Identity>,
) -> Result<Arc<ClientConfig>, String> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match client {
        Some(identity) => builder
            .with_client_auth_cert(identity.certificate_chain(), identity.private_key()?)
            .map_err(|e| format!("the node's certificate cannot be used: {e}"))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// TLS that checks nothing, for fetching a root CA to check against a token.
pub(crate) fn unverified() -> Result<Arc<ClientConfig>, String> {
    config_with(Arc::new(Unverified(provider())), None)
}

/// TLS that requires a manager of `root_ca_pem`'s swarm (of `client`'s
/// organization, when given), presenting `client`'s certificate when given.
pub(crate) fn to_managers(
    root_ca_pem: &[u8],
    client: Option<&Identity>,
) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(root_ca_pem)? {
        roots
            .add(cert)
            .map_err(|e| format!("the swarm's root CA is unusable: {e}"))?;
    }
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| format!("the swarm's root CA is unusable: {e}"))?;
    let verifier = ManagerVerifier {
        webpki,
        organization: client.map(|c| c.organization.clone()),
    };
    config_with(Arc::new(verifier), client)
}

/// A gRPC channel to the manager at `address` (`host:port`), connected now.
pub(crate) async fn connect(address: &str, config: Arc<ClientConfig>) -> Result<Channel, String> {
    let endpoint = Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| format!("bad manager address {address:?}: {e}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10));
    let address = address.to_owned();
    let connector = tower::service_fn(move |_| {
        let (address, config) = (address.clone(), Arc::clone(&config));
        async move {
            let tcp = tokio::net::TcpStream::connect(&address).await?;
            tcp.set_nodelay(true)?;
            let name = ServerName::try_from(MANAGER_ROLE)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    tokio::time::timeout(
        CONNECT_TIMEOUT * 2,
        endpoint.connect_with_connector(connector),
    )
    .await
    .map_err(|_| "timed out".to_owned())?
    .map_err(|e| chain(&e))
}

/// Accepts any certificate (but checks that the peer holds its key).
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Requires a manager's certificate of the swarm's root CA (and organization).
#[derive(Debug)]
struct ManagerVerifier {
    webpki: Arc<WebPkiServerVerifier>,
    organization: Option<String>,
}

impl ServerCertVerifier for ManagerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified =
            self.webpki
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)?;
        let refuse = |why: String| Err(rustls::Error::General(why));
        let subject = Subject::of(end_entity).map_err(rustls::Error::General)?;
        if subject.unit != MANAGER_ROLE {
            return refuse(format!(
                "the peer is not a manager: its certificate is for role {:?}",
                subject.unit
            ));
        }
        match &self.organization {
            Some(ours) if *ours != subject.organization => refuse(format!(
                "the peer is a manager of another swarm ({:?}, not {ours:?})",
                subject.organization
            )),
            _ => Ok(verified),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}
