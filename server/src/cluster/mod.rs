//! Cluster formation and identity: who initializes a new cluster, what a node does when its
//! data belongs to another cluster, which StatefulSet pod a node is (`pod`), and how a pod
//! outside the membership joins the running cluster (`join`).

pub mod bootstrap;
pub mod identity;
pub mod join;
pub mod pod;
pub mod resync;
