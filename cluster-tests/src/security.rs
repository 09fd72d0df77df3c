//! Credentials for a TLS + token cluster: a CA, one certificate per node, an auth file with a
//! `read`, a `write` and an `admin` token, and a second, unrelated CA with a certificate that
//! claims to be node 1 (what an attacker could make for themselves).
//!
//! Node certificates carry the names the server checks (`raftlite-node-<id>`) and the
//! loopback names clients dial (`localhost`, `127.0.0.1`).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::Context;
use raftlite_client::ClientOptions;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use sha2::Digest;

/// The roles of the auth file, in increasing power.
pub const ROLES: [&str; 3] = ["read", "write", "admin"];

pub struct Credentials {
    dir: PathBuf,
    ca: Issuer<'static, KeyPair>,
    tokens: BTreeMap<&'static str, String>,
}

fn new_ca(name: &str) -> anyhow::Result<(Issuer<'static, KeyPair>, String)> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((Issuer::new(params, key), cert.pem()))
}

fn leaf(issuer: &Issuer<'static, KeyPair>, names: Vec<String>) -> anyhow::Result<(String, String)> {
    let params = CertificateParams::new(names)?;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Credentials {
    /// Writes the CA, certificates for `ids`, the rogue CA and certificate, and the auth file
    /// into `dir`.
    pub fn generate(dir: &Path, ids: impl IntoIterator<Item = u64>) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).context("create the credentials directory")?;
        let (ca, ca_pem) = new_ca("raftlite test CA")?;
        std::fs::write(dir.join("ca.crt"), ca_pem)?;
        let mut tokens = BTreeMap::new();
        let mut auth = String::from("tokens:\n");
        for role in ROLES {
            let token = format!("{role}-{}", hex(&rand::random::<[u8; 16]>()));
            let hash = hex(&sha2::Sha256::digest(token.as_bytes()));
            auth.push_str(&format!(
                "  - name: test-{role}\n    sha256: {hash}\n    role: {role}\n"
            ));
            tokens.insert(role, token);
        }
        std::fs::write(dir.join("auth.yaml"), auth)?;
        let creds = Credentials {
            dir: dir.to_owned(),
            ca,
            tokens,
        };
        for id in ids {
            creds.issue_node(id)?;
        }
        let (rogue_ca, rogue_pem) = new_ca("not the cluster's CA")?;
        std::fs::write(dir.join("rogue-ca.crt"), rogue_pem)?;
        let (cert, key) = leaf(
            &rogue_ca,
            vec![
                "raftlite-node-1".into(),
                "localhost".into(),
                "127.0.0.1".into(),
            ],
        )?;
        std::fs::write(dir.join("rogue-node-1.crt"), cert)?;
        std::fs::write(dir.join("rogue-node-1.key"), key)?;
        Ok(creds)
    }

    /// Issues (or re-issues) node `id`'s certificate.
    pub fn issue_node(&self, id: u64) -> anyhow::Result<()> {
        let (cert, key) = leaf(
            &self.ca,
            vec![
                format!("raftlite-node-{id}"),
                "localhost".into(),
                "127.0.0.1".into(),
            ],
        )?;
        std::fs::write(self.cert(id), cert)?;
        std::fs::write(self.key(id), key)?;
        Ok(())
    }

    /// Rotates everything a cert-manager renewal with a new CA would: a new CA, and new
    /// certificates for `ids` signed by it, each file replaced atomically. Tokens stay.
    pub fn rotate_ca(&self, ids: impl IntoIterator<Item = u64>) -> anyhow::Result<()> {
        let (ca, ca_pem) = new_ca("raftlite test CA, rotated")?;
        let write = |path: PathBuf, text: String| -> anyhow::Result<()> {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, text)?;
            std::fs::rename(&tmp, &path)?;
            Ok(())
        };
        // The CA goes first: a node that reloads between two files trusts both generations'
        // signer only once its own certificate is new too, and retries until then.
        write(self.ca_path(), ca_pem)?;
        for id in ids {
            let (cert, key) = leaf(
                &ca,
                vec![
                    format!("raftlite-node-{id}"),
                    "localhost".into(),
                    "127.0.0.1".into(),
                ],
            )?;
            write(self.key(id), key)?;
            write(self.cert(id), cert)?;
        }
        Ok(())
    }

    /// Replaces the auth file's tokens: `entries` of (name, token, role).
    pub fn write_auth_file(&self, entries: &[(&str, &str, &str)]) -> anyhow::Result<()> {
        let mut auth = String::from("tokens:\n");
        for (name, token, role) in entries {
            let hash = hex(&sha2::Sha256::digest(token.as_bytes()));
            auth.push_str(&format!(
                "  - name: {name}\n    sha256: {hash}\n    role: {role}\n"
            ));
        }
        let tmp = self.auth_file().with_extension("tmp");
        std::fs::write(&tmp, auth)?;
        std::fs::rename(&tmp, self.auth_file())?;
        Ok(())
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

    /// A certificate and key for node 1 signed by a CA the cluster does not trust.
    pub fn rogue_cert(&self) -> (PathBuf, PathBuf) {
        (
            self.dir.join("rogue-node-1.crt"),
            self.dir.join("rogue-node-1.key"),
        )
    }

    pub fn auth_file(&self) -> PathBuf {
        self.dir.join("auth.yaml")
    }

    /// The token of `role` (`read`, `write` or `admin`).
    pub fn token(&self, role: &str) -> &str {
        self.tokens
            .get(role)
            .unwrap_or_else(|| panic!("no {role} token"))
    }

    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.ca_path()).expect("the CA file was written at start")
    }

    /// The `raftlite serve` arguments of node `id`: its certificate, the CA and the auth file.
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

    /// Client options with the CA and the token of `role` (`None`: no token).
    pub fn client_options(&self, role: Option<&str>) -> ClientOptions {
        ClientOptions {
            token: role.map(|r| self.token(r).to_owned()),
            tls_ca: Some(self.ca_pem()),
            ..ClientOptions::default()
        }
    }
}
