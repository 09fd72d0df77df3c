//! Cluster formation and identity: who initializes a new cluster, what a node does when its
//! data belongs to another cluster.

pub mod bootstrap;
pub mod identity;
pub mod join;
pub mod pod;
pub mod resync;
