//! Client subcommands of the `raftlite` binary: `sql`, `shell`, `status`, `cluster`,
//! `health`, `migrate`, `restore`, and the local helpers `dev` and `bench`.
//!
//! Each subcommand is a `clap::Args` struct plus `run(args) -> ExitCode`. Their output is a
//! contract that scripts rely on (see each module); errors go to stderr as
//! `error: <GRPC_CODE>: <message>` with exit code 1.

pub mod bench;
pub mod bench_floor;
pub mod bench_log;
pub mod cluster;
pub mod dev;
pub mod health;
pub mod local_cleanup;
pub mod local_cluster;
pub mod local_credentials;
pub mod migrate;
pub mod restore;
pub mod shell;
pub mod sql;
pub mod sql_text;
pub mod status;
pub mod token;

use std::process::ExitCode;

use raftlite_client::{code_name, Client, ClientOptions, ClusterUrl, Error};

/// Nodes to talk to and the credentials to use, shared by the client subcommands.
#[derive(Debug, Clone, clap::Args)]
pub struct AddrArgs {
    /// Nodes to talk to: HOST:PORT (https://HOST:PORT for TLS), several separated by commas
    /// or repeated; or one URL raftlite://[NAME:TOKEN@]HOST:PORT[,HOST:PORT...][?tls_ca=PATH]
    /// carrying the token and the CA. --token, --token-file and --tls-ca override the URL's.
    #[arg(
        long = "addr",
        value_name = "HOST:PORT|URL",
        env = "RAFTLITE_ADDR",
        default_value = "localhost:7000"
    )]
    pub addrs: Vec<String>,
    /// Token sent as `authorization: Bearer TOKEN` (nodes with an auth file require one).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "RAFTLITE_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// File holding the token (e.g. a mounted Secret); used when --token is not given.
    #[arg(long, value_name = "FILE", env = "RAFTLITE_TOKEN_FILE")]
    pub token_file: Option<std::path::PathBuf>,
    /// CA certificate (PEM) that signed the nodes' certificates; turns TLS on.
    #[arg(long, value_name = "FILE", env = "RAFTLITE_TLS_CA")]
    pub tls_ca: Option<std::path::PathBuf>,
}

impl AddrArgs {
    /// The nodes (`HOST:PORT` or `http(s)://HOST:PORT` each), and the URL if one was given.
    pub(crate) fn targets(&self) -> Result<(Vec<String>, Option<ClusterUrl>), Error> {
        if self.addrs.iter().any(|a| ClusterUrl::is_url(a)) {
            if self.addrs.len() > 1 {
                return Err(Error::InvalidEndpoint(
                    "a raftlite:// URL names every node: give it as the only --addr".into(),
                ));
            }
            let url = ClusterUrl::parse(&self.addrs[0])?;
            return Ok((url.endpoints(), Some(url)));
        }
        let nodes = self
            .addrs
            .iter()
            .flat_map(|a| a.split(','))
            .map(|a| a.trim().to_owned())
            .collect();
        Ok((nodes, None))
    }

    /// `base` with the token and CA these arguments name: the flags', else the URL's.
    fn options(
        &self,
        url: Option<&ClusterUrl>,
        base: ClientOptions,
    ) -> Result<ClientOptions, Error> {
        let read = |path: &std::path::Path, what: &str| {
            std::fs::read(path).map_err(|e| {
                Error::InvalidEndpoint(format!("cannot read the {what} {}: {e}", path.display()))
            })
        };
        let token = match (&self.token, &self.token_file) {
            (Some(t), _) => Some(t.trim().to_owned()),
            (None, Some(file)) => Some(
                String::from_utf8_lossy(&read(file, "token file")?)
                    .trim()
                    .to_owned(),
            ),
            (None, None) => url.and_then(|u| u.token()).map(str::to_owned),
        };
        let tls_ca = match self
            .tls_ca
            .as_deref()
            .or(url.and_then(|u| u.tls_ca.as_deref()))
        {
            Some(file) => Some(read(file, "CA certificate")?),
            None => None,
        };
        Ok(ClientOptions {
            token,
            tls_ca,
            ..base
        })
    }

    pub fn client(&self) -> Result<Client, Error> {
        self.client_with(ClientOptions::default())
    }

    /// A client with `base`'s timeouts and these arguments' nodes and credentials.
    pub fn client_with(&self, base: ClientOptions) -> Result<Client, Error> {
        let (nodes, url) = self.targets()?;
        Client::with_options(nodes, self.options(url.as_ref(), base)?)
    }
}

/// `error: <CODE>: <message>`, the one shape of a failed call on stderr.
pub fn error_line(err: &Error) -> String {
    let message = match err {
        Error::Status { message, .. } => message.clone(),
        other => other.to_string(),
    };
    format!("error: {}: {message}", code_name(err.code()))
}

/// Prints a failed call and returns the failure exit code.
pub fn fail(err: &Error) -> ExitCode {
    eprintln!("{}", error_line(err));
    ExitCode::FAILURE
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_print_code_and_message() {
        let err = Error::Status {
            code: tonic::Code::InvalidArgument,
            message: "near \"SELEC\": syntax error".into(),
            leader_hint: None,
        };
        assert_eq!(
            error_line(&err),
            "error: INVALID_ARGUMENT: near \"SELEC\": syntax error"
        );
        let err = Error::Transport("connection refused".into());
        assert_eq!(
            error_line(&err),
            "error: UNAVAILABLE: transport error: connection refused"
        );
    }

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        addr: AddrArgs,
    }

    fn addr_args(args: &[&str]) -> AddrArgs {
        use clap::Parser as _;
        Cli::try_parse_from(std::iter::once("cli").chain(args.iter().copied()))
            .expect("valid arguments")
            .addr
    }

    #[test]
    fn addresses_are_host_port_lists_or_one_url() {
        let (nodes, url) = addr_args(&["--addr", "a:1, b:2", "--addr", "https://c:3"])
            .targets()
            .expect("valid");
        assert_eq!(nodes, ["a:1", "b:2", "https://c:3"]);
        assert!(url.is_none());
        let (nodes, url) = addr_args(&["--addr", "raftlite://app:t0k@a:1,b:2"])
            .targets()
            .expect("valid");
        assert_eq!(nodes, ["a:1", "b:2"]);
        assert_eq!(url.expect("a URL").token(), Some("t0k"));
        let err = addr_args(&["--addr", "raftlite://a:1", "--addr", "b:2"])
            .targets()
            .expect_err("a URL and more");
        assert!(err.to_string().contains("only --addr"), "{err}");
        let err = addr_args(&["--addr", "raftlite://app:t0k@a"])
            .client()
            .expect_err("no port");
        assert!(
            error_line(&err).starts_with("error: INVALID_ARGUMENT: "),
            "{err}"
        );
        assert!(!error_line(&err).contains("t0k"), "{err}");
    }

    #[test]
    fn flags_override_what_the_url_carries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = |name: &str| {
            let (_, pem) = local_credentials::new_ca(name).expect("CA");
            let path = dir.path().join(name);
            std::fs::write(&path, &pem).expect("write");
            (path.display().to_string(), pem.into_bytes())
        };
        let ((url_ca, url_pem), (flag_ca, flag_pem)) = (ca("url-ca.pem"), ca("flag-ca.pem"));
        let url = format!("raftlite://app:from-url@127.0.0.1:7401,127.0.0.1:7402?tls_ca={url_ca}");

        let client = addr_args(&["--addr", &url]).client().expect("valid");
        assert_eq!(client.options().token.as_deref(), Some("from-url"));
        assert_eq!(client.options().tls_ca.as_deref(), Some(&url_pem[..]));
        assert_eq!(
            client.endpoints().collect::<Vec<_>>(),
            ["https://127.0.0.1:7401", "https://127.0.0.1:7402"]
        );

        let client = addr_args(&["--addr", &url, "--token", "from-flag", "--tls-ca", &flag_ca])
            .client()
            .expect("valid");
        assert_eq!(client.options().token.as_deref(), Some("from-flag"));
        assert_eq!(client.options().tls_ca.as_deref(), Some(&flag_pem[..]));

        // A CA flag turns TLS on for a URL without one; the URL's token still goes.
        let client = addr_args(&[
            "--addr",
            "raftlite://app:from-url@h:1",
            "--tls-ca",
            &flag_ca,
        ])
        .client()
        .expect("valid");
        assert_eq!(client.endpoints().collect::<Vec<_>>(), ["https://h:1"]);
        assert_eq!(client.options().token.as_deref(), Some("from-url"));
    }

    #[test]
    fn hex_is_lower_case_and_padded() {
        assert_eq!(hex(&[0x00, 0x0a, 0xff]), "000aff");
        assert_eq!(hex(&[]), "");
    }
}
