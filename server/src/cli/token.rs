//! `raftlite token new`: a fresh random token and the auth-file entry that grants it a role.
//!
//! Prints the token (give it to the client; it is shown once and stored nowhere) and the
//! YAML entry to append under `tokens:` in the auth file (only its SHA-256 is stored there).

use std::process::ExitCode;

use crate::grpc::auth::{sha256, Role};

#[derive(Debug, Clone, clap::Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub action: TokenAction,
}

#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum TokenAction {
    /// Make a new token for ROLE (read | write | admin) named NAME in logs.
    New {
        /// read: Query and Status; write: also Execute; admin: also membership, leadership
        /// and snapshots.
        #[arg(long, value_parser = ["read", "write", "admin"])]
        role: String,
        /// The name the node's logs use for this token (never its value).
        #[arg(long, default_value = "app")]
        name: String,
    },
}

/// A new token: 256 random bits, hex.
pub fn new_token() -> String {
    super::hex(&rand::random::<[u8; 32]>())
}

/// The auth-file entry for `token`.
pub fn auth_entry(name: &str, role: Role, token: &str) -> String {
    format!(
        "  - name: {name}\n    sha256: {}\n    role: {}\n",
        super::hex(&sha256(token)),
        role.name()
    )
}

pub fn run(args: TokenArgs) -> ExitCode {
    match args.action {
        TokenAction::New { role, name } => {
            let Some(role) = Role::parse(&role) else {
                eprintln!("error: INVALID_ARGUMENT: role must be read, write or admin");
                return ExitCode::FAILURE;
            };
            let token = new_token();
            println!("token: {token}");
            println!("# auth file entry (append under `tokens:`):");
            print!("{}", auth_entry(&name, role, &token));
            ExitCode::SUCCESS
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::auth::Tokens;

    #[test]
    fn the_entry_grants_the_token_its_role() {
        let token = new_token();
        assert_eq!(token.len(), 64);
        let file = format!("tokens:\n{}", auth_entry("ci", Role::Write, &token));
        let tokens = Tokens::parse(&file).expect("a valid auth file");
        assert_eq!(tokens.check(&token), Some(&("ci".to_owned(), Role::Write)));
        assert_eq!(tokens.check(&new_token()), None);
    }
}
