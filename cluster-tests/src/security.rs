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
use raftlite::cli::local_credentials::{leaf, new_ca, node_names};
use raftlite::cli::token::auth_entry;
use raftlite::grpc::auth::Role;
use raftlite_client::ClientOptions;
use rcgen::{Issuer, KeyPair};

/// The roles of the auth file, in increasing power.
pub const ROLES: [&str; 3] = ["read", "write", "admin"];

pub struct Credentials {
    dir: PathBuf,
    ca: Issuer<'static, KeyPair>,
    tokens: BTreeMap<&'static str, String>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Auth-file lines for `entries` of (name, token, role), as `raftlite token new` writes them.
fn auth_file_text(entries: &[(&str, &str, &str)]) -> anyhow::Result<String> {
    let mut auth = String::from("tokens:\n");
    for (name, token, role) in entries {
        let role = Role::parse(role).with_context(|| format!("no role {role:?}"))?;
        auth.push_str(&auth_entry(name, role, token));
    }
    Ok(auth)
}

impl Credentials {
    /// Writes the CA, certificates for `ids`, the rogue CA and certificate, and the auth file
    /// into `dir`.
    pub fn generate(dir: &Path, ids: impl IntoIterator<Item = u64>) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).context("create the credentials directory")?;
        let (ca, ca_pem) = new_ca("raftlite test CA")?;
        std::fs::write(dir.join("ca.crt"), ca_pem)?;
        let tokens: BTreeMap<&'static str, String> = ROLES
            .iter()
            .map(|role| {
                (
                    *role,
                    format!("{role}-{}", hex(&rand::random::<[u8; 16]>())),
                )
            })
            .collect();
        let names: Vec<String> = ROLES.iter().map(|role| format!("test-{role}")).collect();
        let entries: Vec<(&str, &str, &str)> = ROLES
            .iter()
            .zip(&names)
            .map(|(role, name)| (name.as_str(), tokens[role].as_str(), *role))
            .collect();
        std::fs::write(dir.join("auth.yaml"), auth_file_text(&entries)?)?;
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
        let (cert, key) = leaf(&rogue_ca, node_names(1))?;
        std::fs::write(dir.join("rogue-node-1.crt"), cert)?;
        std::fs::write(dir.join("rogue-node-1.key"), key)?;
        Ok(creds)
    }

    /// Issues (or re-issues) node `id`'s certificate.
    pub fn issue_node(&self, id: u64) -> anyhow::Result<()> {
        let (cert, key) = leaf(&self.ca, node_names(id))?;
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
            let (cert, key) = leaf(&ca, node_names(id))?;
            write(self.key(id), key)?;
            write(self.cert(id), cert)?;
        }
        Ok(())
    }

    /// Replaces the auth file's tokens: `entries` of (name, token, role).
    pub fn write_auth_file(&self, entries: &[(&str, &str, &str)]) -> anyhow::Result<()> {
        let tmp = self.auth_file().with_extension("tmp");
        std::fs::write(&tmp, auth_file_text(entries)?)?;
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

    /// A certificate and key signed by the cluster's CA that names no node, only `host`:
    /// what any other workload sharing the CA (a cert-manager issuer) holds.
    pub fn stranger_cert(&self, host: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
        let (cert, key) = leaf(&self.ca, vec![host.to_owned()])?;
        let paths = (
            self.dir.join(format!("stranger-{host}.crt")),
            self.dir.join(format!("stranger-{host}.key")),
        );
        std::fs::write(&paths.0, cert)?;
        std::fs::write(&paths.1, key)?;
        Ok(paths)
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

/// A raw `Sql` client over TLS to the client port at `addr`, trusting `ca`: what an attacker
/// with a valid token of its own can send (the token goes in each request's metadata).
pub fn raw_sql(
    addr: std::net::SocketAddr,
    ca: Vec<u8>,
) -> raftlite_proto::v1::sql_client::SqlClient<tonic::transport::Channel> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    raftlite_proto::v1::sql_client::SqlClient::new(
        Endpoint::from_shared(format!("https://{addr}"))
            .expect("uri")
            .tls_config(tls)
            .expect("tls")
            .connect_lazy(),
    )
    .max_encoding_message_size(64 << 20)
}
