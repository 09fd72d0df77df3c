//! Client subcommands of the `raftlite` binary: `sql`, `status`, `cluster`, `health`,
//! `migrate`, `restore`, and the local helpers `dev` and `bench`.
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
pub mod sql;
pub mod sql_text;
pub mod status;
pub mod token;

use std::process::ExitCode;

use raftlite_client::{code_name, Client, ClientOptions, Error};

/// Nodes to talk to and the credentials to use, shared by the client subcommands.
#[derive(Debug, Clone, clap::Args)]
pub struct AddrArgs {
    /// Node to talk to (HOST:PORT, or https://HOST:PORT for TLS); repeat or separate with
    /// commas to give several.
    #[arg(
        long = "addr",
        value_name = "HOST:PORT",
        env = "RAFTLITE_ADDR",
        value_delimiter = ',',
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
    /// Client options carrying the token and CA these arguments name.
    pub fn options(&self) -> Result<ClientOptions, Error> {
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
            (None, None) => None,
        };
        let tls_ca = match &self.tls_ca {
            Some(file) => Some(read(file, "CA certificate")?),
            None => None,
        };
        Ok(ClientOptions {
            token,
            tls_ca,
            ..ClientOptions::default()
        })
    }

    pub fn client(&self) -> Result<Client, Error> {
        Client::with_options(self.addrs.iter().map(String::as_str), self.options()?)
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

    #[test]
    fn hex_is_lower_case_and_padded() {
        assert_eq!(hex(&[0x00, 0x0a, 0xff]), "000aff");
        assert_eq!(hex(&[]), "");
    }
}
