//! The node's identity and where it is kept: its key and certificate, the swarm's
//! root CA, and the managers it last heard of, in the node's state directory.
//!
//! Each file is written whole to a new temporary file, synced, and renamed over
//! the old one, so that a crash leaves the old file or the new one, never half of
//! either; `node.pem` (key and certificate together, mode 0600) goes last and is
//! what makes a directory a joined node's. The directory is this user's alone
//! (mode 0700), made if missing; a link or another user's directory is refused.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

const ROOT_CA: &str = "ca.pem";
const NODE: &str = "node.pem";
const MANAGERS: &str = "managers";

/// SwarmKit's role for worker nodes, in their certificates' OU.
pub(crate) const WORKER_ROLE: &str = "swarm-worker";

/// Who this node is in its swarm, as its certificate says.
#[derive(Clone)]
pub(crate) struct Identity {
    /// The node's id, its certificate's CN.
    pub(crate) node_id: String,
    /// The swarm's id, its certificate's O.
    pub(crate) organization: String,
    /// The node's private key (PKCS#8 PEM).
    pub(crate) key_pem: String,
    /// Its certificate chain (PEM).
    pub(crate) cert_pem: String,
    /// The swarm's root CA (PEM).
    pub(crate) root_ca_pem: Vec<u8>,
    pub(crate) not_before: SystemTime,
    pub(crate) not_after: SystemTime,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("node_id", &self.node_id)
            .field("organization", &self.organization)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// The identity a key and certificate give, checked: the certificate must be
    /// a worker's, issued by `root_ca_pem`'s swarm.
    pub(crate) fn new(
        key_pem: String,
        cert_pem: String,
        root_ca_pem: Vec<u8>,
    ) -> Result<Identity, String> {
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| format!("the node's key is unreadable: {e}"))?;
        let leaf = certificates(cert_pem.as_bytes())?
            .into_iter()
            .next()
            .ok_or("the node's certificate is missing")?;
        let subject = Subject::of(&leaf)?;
        if subject.unit != WORKER_ROLE {
            return Err(format!(
                "the node's certificate is for role {:?}, not a worker's",
                subject.unit
            ));
        }
        Ok(Identity {
            node_id: subject.common_name,
            organization: subject.organization,
            key_pem,
            cert_pem,
            root_ca_pem,
            not_before: subject.not_before,
            not_after: subject.not_after,
        })
    }

    pub(crate) fn certificate_chain(&self) -> Vec<CertificateDer<'static>> {
        certificates(self.cert_pem.as_bytes()).unwrap_or_default()
    }

    pub(crate) fn private_key(&self) -> Result<PrivateKeyDer<'static>, String> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| format!("the node's key is unreadable: {e}"))
    }

    /// What the managers want to know of the node's trust (SwarmKit's
    /// `NodeTLSInfo`, which a root CA rotation waits on): the root CA, and the
    /// subject and public key of the certificate's issuer, DER.
    pub(crate) fn tls_info(&self) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let chain = self.certificate_chain();
        let issuer = chain.first().and_then(|leaf| {
            let (_, leaf) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
            let subject = leaf.issuer().as_raw().to_vec();
            let roots = certificates(&self.root_ca_pem).ok()?;
            let key = roots.iter().chain(&chain[1..]).find_map(|cert| {
                let (_, cert) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
                (cert.subject().as_raw() == subject.as_slice())
                    .then(|| cert.public_key().raw.to_vec())
            })?;
            Some((subject, key))
        });
        let (subject, key) = issuer.unwrap_or_default();
        (self.root_ca_pem.clone(), subject, key)
    }

    /// When to ask for a new certificate: as SwarmKit's nodes do, at a random
    /// point between half and four fifths of the certificate's life.
    pub(crate) fn renewal_time(&self, jitter: f64) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or(Duration::ZERO);
        self.not_before + life.mul_f64(0.5 + 0.3 * jitter.clamp(0.0, 1.0))
    }
}

/// The certificates of a PEM bundle.
pub(crate) fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("unreadable certificate: {e}"))
}

/// What a SwarmKit certificate's subject and validity say.
pub(crate) struct Subject {
    pub(crate) common_name: String,
    pub(crate) unit: String,
    pub(crate) organization: String,
    pub(crate) not_before: SystemTime,
    pub(crate) not_after: SystemTime,
}

impl Subject {
    pub(crate) fn of(cert: &CertificateDer<'_>) -> Result<Subject, String> {
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
            .map_err(|e| format!("unreadable certificate: {e}"))?;
        let subject = parsed.subject();
        let time = |t: x509_parser::time::ASN1Time| {
            UNIX_EPOCH + Duration::from_secs(u64::try_from(t.timestamp()).unwrap_or(0))
        };
        Ok(Subject {
            common_name: first_text(subject.iter_common_name()),
            unit: first_text(subject.iter_organizational_unit()),
            organization: first_text(subject.iter_organization()),
            not_before: time(parsed.validity().not_before),
            not_after: time(parsed.validity().not_after),
        })
    }
}

/// The first of a subject's values of one attribute, as text.
fn first_text<'a>(
    mut attrs: impl Iterator<Item = &'a x509_parser::x509::AttributeTypeAndValue<'a>>,
) -> String {
    let text = attrs.next().and_then(|a| a.as_str().ok());
    text.unwrap_or_default().to_owned()
}

/// The node's state directory.
pub(crate) struct StateDir {
    path: PathBuf,
}

impl StateDir {
    /// Opens `path`, making it (mode 0700) if missing.
    pub(crate) fn open(path: &Path) -> Result<StateDir, String> {
        let problem = |e: std::io::Error| format!("state directory {}: {e}", path.display());
        match fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
        {
            Ok(()) => {}
            Err(e) => return Err(problem(e)),
        }
        let meta = fs::symlink_metadata(path).map_err(problem)?;
        if !meta.is_dir() {
            return Err(format!(
                "state directory {} is not a directory",
                path.display()
            ));
        }
        // The directory holds the node's key: it must be ours and closed to others.
        if meta.uid() != crate::sys::effective_uid() {
            return Err(format!(
                "state directory {} belongs to another user (uid {})",
                path.display(),
                meta.uid()
            ));
        }
        if meta.mode() & 0o077 != 0 {
            fs::set_permissions(path, fs::Permissions::from_mode(0o700)).map_err(problem)?;
        }
        Ok(StateDir {
            path: path.to_owned(),
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The identity stored here; `None` when the node never joined (or left).
    pub(crate) fn identity(&self) -> Result<Option<Identity>, String> {
        let node = match self.read(NODE)? {
            Some(node) => node,
            None => return Ok(None),
        };
        let root_ca = self
            .read(ROOT_CA)?
            .ok_or_else(|| format!("{} has {NODE} but no {ROOT_CA}", self.path.display()))?;
        let node = String::from_utf8(node).map_err(|_| format!("{NODE} is not PEM"))?;
        let (key, chain) = split_key_and_chain(&node)?;
        Identity::new(key, chain, root_ca)
            .map(Some)
            .map_err(|e| format!("{}: {e}", self.path.join(NODE).display()))
    }

    /// Stores `identity`, replacing what was there.
    pub(crate) fn store_identity(&self, identity: &Identity) -> Result<(), String> {
        self.write(ROOT_CA, &identity.root_ca_pem, 0o644)?;
        let node = format!("{}{}", identity.key_pem, identity.cert_pem);
        self.write(NODE, node.as_bytes(), 0o600)
    }

    /// Forgets the identity (after the node was removed from its swarm).
    pub(crate) fn forget_identity(&self) -> Result<(), String> {
        for name in [NODE, ROOT_CA, MANAGERS] {
            match fs::remove_file(self.path.join(name)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("{}: {e}", self.path.join(name).display())),
            }
        }
        Ok(())
    }

    /// The managers the node last heard of, best first.
    pub(crate) fn managers(&self) -> Result<Vec<String>, String> {
        let text = self.read(MANAGERS)?.unwrap_or_default();
        Ok(String::from_utf8_lossy(&text)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect())
    }

    pub(crate) fn store_managers(&self, managers: &[String]) -> Result<(), String> {
        let mut text = managers.join("\n");
        text.push('\n');
        self.write(MANAGERS, text.as_bytes(), 0o644)
    }

    fn read(&self, name: &str) -> Result<Option<Vec<u8>>, String> {
        let path = self.path.join(name);
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path);
        match file {
            Ok(mut file) => {
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(&mut file, &mut bytes)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                Ok(Some(bytes))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// Writes `name` whole or not at all.
    fn write(&self, name: &str, bytes: &[u8], mode: u32) -> Result<(), String> {
        let path = self.path.join(name);
        let temporary = self.path.join(format!(".{name}.new"));
        let problem = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
        let _ = fs::remove_file(&temporary);
        let written = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&temporary)?;
            file.write_all(bytes)?;
            file.sync_all()?;
            fs::rename(&temporary, &path)?;
            File::open(&self.path)?.sync_all()
        })();
        if written.is_err() {
            let _ = fs::remove_file(&temporary);
        }
        written.map_err(problem)
    }
}

/// Splits `node.pem` into its key and its certificate chain.
fn split_key_and_chain(pem: &str) -> Result<(String, String), String> {
    let start = pem
        .find("-----BEGIN CERTIFICATE-----")
        .ok_or_else(|| format!("{NODE} has no certificate"))?;
    Ok((pem[..start].to_owned(), pem[start..].to_owned()))
}
