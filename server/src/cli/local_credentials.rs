//! Throwaway credentials for a [`LocalCluster`](super::local_cluster::LocalCluster) in the
//! production configuration (`raftlite bench` without `--insecure`).
//!
//! A fresh CA, one certificate per node, and an auth file with a `write` token (what clients
//! get) and an `admin` token (to rehearse membership changes), all
//! written into the cluster's directory and removed with it. Node certificates name
//! `raftlite-node-<id>` (the identity the peer port checks, see [`crate::tls`]) and the
//! loopback names peers and clients dial (`127.0.0.1`, `localhost`). With them each node runs
//! exactly as a production node does: mutual TLS on the peer port, TLS and tokens on the
//! client port.
//!
//! Private keys are written with mode 0600; the CA's key is never written (no certificate
//! can be issued after the cluster starts).

use std::ffi::OsString;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use raftlite_client::{ClientOptions, ClusterUrl};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

use crate::grpc::auth::Role;

/// Name of the token in the auth file and the nodes' logs, and the label of the cluster's URL
/// (`raftlite://dev:TOKEN@...`).
const TOKEN_NAME: &str = "dev";

/// Name of the `admin` token (membership changes, snapshots), and the label of its URL.
const ADMIN_TOKEN_NAME: &str = "dev-admin";

/// The CA, node certificates and token of one local cluster.
#[derive(Clone)]
pub struct LocalCredentials {
    dir: PathBuf,
    ca_pem: Vec<u8>,
    token: String,
    admin_token: String,
}

impl std::fmt::Debug for LocalCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCredentials")
            .field("dir", &self.dir)
            .field("token", &"<redacted>")
            .field("admin_token", &"<redacted>")
            .finish()
    }
}

/// A new self-signed CA named `name`: the issuer of leaf certificates, and its PEM.
pub fn new_ca(name: &str) -> anyhow::Result<(Issuer<'static, KeyPair>, String)> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate()?;
    let pem = params.self_signed(&key)?.pem();
    Ok((Issuer::new(params, key), pem))
}

/// A certificate for `names` signed by `issuer`, and its new private key, both PEM.
pub fn leaf(
    issuer: &Issuer<'static, KeyPair>,
    names: Vec<String>,
) -> anyhow::Result<(String, String)> {
    let key = KeyPair::generate()?;
    let cert = CertificateParams::new(names)?.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// The names a node's certificate carries on loopback: the identity the peer port checks
/// (`raftlite-node-<id>`) and the addresses peers and clients dial.
pub fn node_names(id: u64) -> Vec<String> {
    vec![
        crate::tls::node_name(id),
        "127.0.0.1".to_owned(),
        "localhost".to_owned(),
    ]
}

impl LocalCredentials {
    /// Writes `ca.crt`, `node-<id>.crt` and `node-<id>.key` for each of `ids`, and
    /// `auth.yaml`, into `dir` (created if missing).
    pub fn generate(dir: &Path, ids: impl IntoIterator<Item = u64>) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("create the credentials directory {}", dir.display()))?;
        // Absolute: the paths end up in a URL that works from any directory.
        let dir =
            &std::path::absolute(dir).with_context(|| format!("resolve {}", dir.display()))?;
        let (issuer, ca_pem) = new_ca("raftlite local cluster CA")?;
        write_file(&dir.join("ca.crt"), ca_pem.as_bytes(), 0o644)?;
        let credentials = LocalCredentials {
            dir: dir.to_owned(),
            ca_pem: ca_pem.into_bytes(),
            token: super::token::new_token(),
            admin_token: super::token::new_token(),
        };
        for id in ids {
            let (cert, key) = leaf(&issuer, node_names(id))?;
            write_file(&credentials.cert(id), cert.as_bytes(), 0o644)?;
            write_file(&credentials.key(id), key.as_bytes(), 0o600)?;
        }
        let auth = format!(
            "tokens:\n{}{}",
            super::token::auth_entry(TOKEN_NAME, Role::Write, &credentials.token),
            super::token::auth_entry(ADMIN_TOKEN_NAME, Role::Admin, &credentials.admin_token)
        );
        write_file(&credentials.auth_file(), auth.as_bytes(), 0o600)?;
        Ok(credentials)
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    pub fn cert(&self, id: u64) -> PathBuf {
        self.dir.join(format!("node-{id}.crt"))
    }

    pub fn key(&self, id: u64) -> PathBuf {
        self.dir.join(format!("node-{id}.key"))
    }

    pub fn auth_file(&self) -> PathBuf {
        self.dir.join("auth.yaml")
    }

    /// PEM of the CA that signed every node's certificate.
    pub fn ca_pem(&self) -> &[u8] {
        &self.ca_pem
    }

    /// The `raftlite serve` arguments of node `id`.
    pub fn serve_args(&self, id: u64) -> Vec<OsString> {
        vec![
            "--tls-cert".into(),
            self.cert(id).into(),
            "--tls-key".into(),
            self.key(id).into(),
            "--tls-ca".into(),
            self.ca_path().into(),
            "--auth-file".into(),
            self.auth_file().into(),
        ]
    }

    /// `base` with the `write` token and the CA's path (TLS on).
    pub fn url(&self, base: ClusterUrl) -> ClusterUrl {
        base.with_token(TOKEN_NAME, &self.token)
            .with_tls_ca(self.ca_path())
    }

    /// `base` with the `admin` token and the CA's path (TLS on).
    pub fn admin_url(&self, base: ClusterUrl) -> ClusterUrl {
        base.with_token(ADMIN_TOKEN_NAME, &self.admin_token)
            .with_tls_ca(self.ca_path())
    }

    /// `base` with the CA (TLS on) and the `write` token.
    pub fn client_options(&self, base: ClientOptions) -> ClientOptions {
        ClientOptions {
            token: Some(self.token.clone()),
            tls_ca: Some(self.ca_pem.clone()),
            ..base
        }
    }
}

fn write_file(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    file.write_all(contents)
        .with_context(|| format!("write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;
    use crate::grpc::auth::Tokens;

    #[test]
    fn nodes_load_the_files_and_the_token_may_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let creds =
            LocalCredentials::generate(&dir.path().join("tls"), [1, 2, 3]).expect("generate");
        for id in 1..=3 {
            // What a node does with --tls-cert/--tls-key/--tls-ca at start.
            crate::tls::Tls::load(crate::tls::TlsFiles {
                cert: creds.cert(id),
                key: creds.key(id),
                ca: creds.ca_path(),
            })
            .unwrap_or_else(|e| panic!("node {id}'s TLS files: {e:#}"));
            let mode = std::fs::metadata(creds.key(id))
                .expect("key")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "node {id}'s key");
        }
        let text = std::fs::read_to_string(creds.auth_file()).expect("auth file");
        let tokens = Tokens::parse(&text).expect("a valid auth file");
        let options = creds.client_options(ClientOptions::default());
        let token = options.token.as_deref().expect("a token");
        assert_eq!(
            tokens.check(token),
            Some(&(TOKEN_NAME.to_owned(), Role::Write))
        );
        assert_eq!(options.tls_ca.as_deref(), Some(creds.ca_pem()));
        let admin = creds.admin_url(ClusterUrl::new(["127.0.0.1:7401"]));
        let admin_token = admin.token().expect("an admin token");
        assert_eq!(
            tokens.check(admin_token),
            Some(&(ADMIN_TOKEN_NAME.to_owned(), Role::Admin))
        );
        assert_ne!(admin_token, token);
        for secret in [token, admin_token] {
            assert!(
                !format!("{creds:?}").contains(secret),
                "no token is in Debug"
            );
        }
        let url = creds.url(ClusterUrl::new(["127.0.0.1:7401"]));
        assert_eq!(url.token(), Some(token));
        assert_eq!(url.tls_ca, Some(creds.ca_path()));
        assert!(creds.ca_path().is_absolute());
    }

    #[test]
    fn certificates_name_the_node_and_loopback() {
        let dir = tempfile::tempdir().expect("tempdir");
        let creds = LocalCredentials::generate(dir.path(), [7]).expect("generate");
        let pem = std::fs::read(creds.cert(7)).expect("cert");
        let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).expect("PEM");
        let cert = pem.parse_x509().expect("X.509");
        let sans = cert
            .subject_alternative_name()
            .expect("well-formed")
            .expect("has SANs");
        use x509_parser::extensions::GeneralName;
        let names = &sans.value.general_names;
        assert!(
            names.contains(&GeneralName::DNSName("raftlite-node-7")),
            "{names:?}"
        );
        assert!(
            names.contains(&GeneralName::IPAddress(&[127, 0, 0, 1])),
            "{names:?}"
        );
        let args = creds.serve_args(7);
        assert_eq!(args[0], "--tls-cert");
        assert_eq!(args[1], creds.cert(7).into_os_string());
        assert_eq!(args.len(), 8);
    }
}
