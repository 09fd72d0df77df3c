//! Cluster-style tests: leader and follower compared byte for byte.
