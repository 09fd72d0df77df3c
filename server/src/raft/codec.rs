//! One binary encoding for everything Raft puts on disk or on the wire (bincode with a size
//! limit). Decoding garbage returns an error: the limit stops a forged length prefix from
//! allocating without bound, and nothing here panics on bad input.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Larger than any message we send (deltas are bounded by the request size limit times the
/// group-commit cap, and appends by `max_payload_entries`).
pub const MAX_MESSAGE_BYTES: u64 = 1 << 30;

fn options() -> impl bincode::Options {
    use bincode::Options;
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_limit(MAX_MESSAGE_BYTES)
        .reject_trailing_bytes()
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, bincode::Error> {
    use bincode::Options;
    options().serialize(value)
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, bincode::Error> {
    use bincode::Options;
    options().deserialize(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::types::{Entry, TypeConfig};
    use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, VoteRequest};
    use proptest::prelude::*;

    proptest! {
        /// Peer messages are decoded from network input: garbage must be an error, not a panic.
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let _ = decode::<AppendEntriesRequest<TypeConfig>>(&bytes);
            let _ = decode::<AppendEntriesResponse<u64>>(&bytes);
            let _ = decode::<VoteRequest<u64>>(&bytes);
            let _ = decode::<Entry>(&bytes);
        }

        /// A huge length prefix is refused by the limit instead of allocating.
        #[test]
        fn forged_length_is_refused(len in (MAX_MESSAGE_BYTES + 1)..u64::MAX) {
            let mut bytes = len.to_le_bytes().to_vec();
            bytes.extend_from_slice(&[0u8; 16]);
            prop_assert!(decode::<Vec<u8>>(&bytes).is_err());
        }
    }

    #[test]
    fn entry_round_trips() {
        let entry: Entry = openraft::Entry {
            log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(3, 1), 42),
            payload: openraft::EntryPayload::Normal(crate::raft::types::Command::Delta(
                bytes::Bytes::from_static(b"pages"),
            )),
        };
        let back: Entry = decode(&encode(&entry).expect("encode")).expect("decode");
        assert_eq!(back.log_id, entry.log_id);
    }
}
