//! Client subcommands of the `raftlite` binary: `sql`, `status`, `cluster`, `health`,
//! `migrate`, `restore`, and the local helpers `dev` and `bench`.
//!
//! Each subcommand is a `clap::Args` struct plus `run(args) -> ExitCode`. Their output is a
//! contract that scripts rely on (see each module); errors go to stderr as
//! `error: <GRPC_CODE>: <message>` with exit code 1.

pub mod bench;
pub mod cluster;
pub mod dev;
pub mod health;
pub mod local_cluster;
pub mod migrate;
pub mod restore;
pub mod sql;
pub mod sql_text;
pub mod status;

use std::process::ExitCode;

use raftlite_client::{code_name, Client, Error};

/// Nodes to talk to, shared by the client subcommands.
#[derive(Debug, Clone, clap::Args)]
pub struct AddrArgs {
    /// Node to talk to (HOST:PORT); repeat or separate with commas to give several.
    #[arg(
        long = "addr",
        value_name = "HOST:PORT",
        env = "RAFTLITE_ADDR",
        value_delimiter = ',',
        required = true
    )]
    pub addrs: Vec<String>,
}

impl AddrArgs {
    pub fn client(&self) -> Result<Client, Error> {
        Client::connect(self.addrs.iter().map(String::as_str))
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
