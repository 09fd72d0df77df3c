//! Pod identity: a node's id and the initial membership, derived from the StatefulSet.
//!
//! A StatefulSet names its pods `NAME-0`, `NAME-1`, ... and, with a headless Service `SVC`,
//! gives each a stable DNS name `NAME-i.SVC.NAMESPACE.svc.cluster.local`. So a pod can work out
//! who it is and who its peers are without any per-pod configuration:
//!
//! - **node id = ordinal + 1.** Node ids start at 1 (0 is not a valid id), so pod `raftlite-0`
//!   is node 1 and `raftlite-2` is node 3.
//! - **The pod name** comes from `POD_NAME` (the downward API: `fieldRef: metadata.name`), else
//!   from the `HOSTNAME` variable, else from the kernel's hostname. Kubernetes sets the hostname
//!   to the pod name, but images (or ConfigMaps) sometimes override `HOSTNAME` — the LiteFS
//!   guide's `HOSTNAME=0.0.0.0` — which is why `POD_NAME` is read first and the chart sets it.
//! - **The peers** come from one pattern, `NAME.SVC.NAMESPACE.svc.cluster.local:PORT`
//!   ([`StatefulSetPeers`]), and the initial replica count: pods `0..replicas` form the initial
//!   membership. A pod with a higher ordinal (a scale-up) joins the running cluster instead.
//!
//! # Key decisions and trade-offs
//!
//! - **A name that is not a StatefulSet pod name stops the node.** No ordinal, an IP address
//!   (`0.0.0.0`), or a pod of another StatefulSet than the peer pattern names: every pod would
//!   otherwise pick the same id, or a wrong one, and the failure would surface much later as a
//!   confusing cluster split. The error says which source was used and how to fix it.
//! - **An FQDN hostname is accepted** (`raftlite-0.raftlite.ns.svc.cluster.local`): its first
//!   label is the pod name. Some platforms set the hostname that way.
//! - **Ordinals with leading zeros are refused** (`db-01`): StatefulSets never produce them, so
//!   such a name is a hand-made hostname that happens to end in digits.

use std::collections::BTreeMap;
use std::net::IpAddr;

/// Where the pod name was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameSource {
    /// `POD_NAME`, set by the downward API.
    PodNameEnv,
    /// The `HOSTNAME` environment variable.
    HostnameEnv,
    /// The kernel's hostname (`/proc/sys/kernel/hostname`).
    KernelHostname,
}

impl NameSource {
    fn describe(self) -> &'static str {
        match self {
            Self::PodNameEnv => "POD_NAME",
            Self::HostnameEnv => "HOSTNAME",
            Self::KernelHostname => "the hostname",
        }
    }
}

/// A StatefulSet pod name split into its StatefulSet name and ordinal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodName {
    pub statefulset: String,
    pub ordinal: u64,
}

impl PodName {
    /// Parses `NAME-ORDINAL` (or an FQDN whose first label is that). Returns what is wrong.
    pub fn parse(name: &str) -> Result<Self, String> {
        let name = name.trim();
        if name.is_empty() {
            return Err("is empty".to_owned());
        }
        let bare = name.trim_start_matches('[').trim_end_matches(']');
        if bare.parse::<IpAddr>().is_ok() {
            return Err(format!(
                "{name:?} is an IP address, not a pod name (an image or pod spec that sets \
                 HOSTNAME=0.0.0.0 to make a server bind every interface looks like this)"
            ));
        }
        let label = name.split('.').next().unwrap_or(name);
        let shape = || {
            format!(
                "{name:?} is not a StatefulSet pod name: expected NAME-ORDINAL such as \
                 raftlite-0 (lower-case letters, digits and '-')"
            )
        };
        if label.len() > 63
            || !label
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(shape());
        }
        let Some((statefulset, ordinal)) = label.rsplit_once('-') else {
            return Err(shape());
        };
        if statefulset.is_empty()
            || ordinal.is_empty()
            || !ordinal.chars().all(|c| c.is_ascii_digit())
            || (ordinal.len() > 1 && ordinal.starts_with('0'))
        {
            return Err(shape());
        }
        let ordinal = ordinal.parse::<u64>().map_err(|_| shape())?;
        if ordinal == u64::MAX {
            return Err(shape());
        }
        Ok(Self {
            statefulset: statefulset.to_owned(),
            ordinal,
        })
    }

    /// The node id of this pod: ordinal + 1, because node ids start at 1.
    pub fn node_id(&self) -> u64 {
        self.ordinal + 1
    }
}

/// A node id derived from the pod, with where it came from (for the startup log).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodIdentity {
    pub pod: PodName,
    pub source: NameSource,
    /// The name as read.
    pub name: String,
}

impl PodIdentity {
    pub fn node_id(&self) -> u64 {
        self.pod.node_id()
    }

    /// `POD_NAME=raftlite-2 (ordinal 2 + 1)`, for the startup log.
    pub fn describe(&self) -> String {
        format!(
            "{}={} (ordinal {} + 1)",
            self.source.describe(),
            self.name,
            self.pod.ordinal
        )
    }
}

/// Works out this pod's identity from `POD_NAME`, else `HOSTNAME`, else the kernel hostname.
/// `env` looks up environment variables; `kernel_hostname` is only called when both are unset.
/// The error explains what was found and how to fix it.
pub fn pod_identity(
    env: impl Fn(&str) -> Option<String>,
    kernel_hostname: impl FnOnce() -> Option<String>,
) -> Result<PodIdentity, String> {
    let non_empty = |v: Option<String>| v.filter(|v| !v.trim().is_empty());
    let (source, name) = if let Some(name) = non_empty(env("POD_NAME")) {
        (NameSource::PodNameEnv, name)
    } else if let Some(name) = non_empty(env("HOSTNAME")) {
        (NameSource::HostnameEnv, name)
    } else if let Some(name) = non_empty(kernel_hostname()) {
        (NameSource::KernelHostname, name)
    } else {
        return Err(format!(
            "cannot tell which pod this is: POD_NAME and HOSTNAME are not set and the hostname \
             is unknown. {FIX}"
        ));
    };
    let name = name.trim().to_owned();
    match PodName::parse(&name) {
        Ok(pod) => Ok(PodIdentity { pod, source, name }),
        Err(problem) => {
            let advice = match source {
                NameSource::PodNameEnv => {
                    "POD_NAME must be the pod's own name: set it with the downward API \
                     (valueFrom: {fieldRef: {fieldPath: metadata.name}}), or set --node-id"
                }
                NameSource::HostnameEnv => {
                    "Kubernetes sets HOSTNAME to the pod name: do not override it in the image \
                     (ENV HOSTNAME=...) or in the pod spec. Better: set POD_NAME with the \
                     downward API, which is read first, or set --node-id"
                }
                NameSource::KernelHostname => FIX,
            };
            Err(format!(
                "cannot derive this node's id from {}: {problem}. {advice}",
                source.describe()
            ))
        }
    }
}

const FIX: &str = "Run raftlite as a StatefulSet pod with POD_NAME from the downward API \
                   (valueFrom: {fieldRef: {fieldPath: metadata.name}}), or set --node-id, \
                   RAFTLITE_NODE_ID or node_id in the config file";

/// The kernel's hostname, as Kubernetes and Docker set it for a container.
pub fn kernel_hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
}

/// The peer pattern `NAME.SVC.NAMESPACE.svc.cluster.local:PORT`: pod `i` of StatefulSet
/// `NAME` is reached at `NAME-i.SVC.NAMESPACE.svc.cluster.local:PORT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatefulSetPeers {
    /// The StatefulSet name (the first label of the pattern).
    pub statefulset: String,
    /// Everything after the first label: `SVC.NAMESPACE.svc.cluster.local`.
    pub domain: String,
    pub port: u16,
}

impl StatefulSetPeers {
    /// Parses the pattern. Returns what is wrong.
    pub fn parse(pattern: &str) -> Result<Self, String> {
        let pattern = pattern.trim();
        let shape = || {
            format!(
                "{pattern:?} is not NAME.SERVICE[.NAMESPACE.svc.cluster.local]:PORT \
                 (NAME is the StatefulSet, SERVICE its headless Service), e.g. \
                 raftlite.raftlite.default.svc.cluster.local:7000"
            )
        };
        let (host, port) = pattern.rsplit_once(':').ok_or_else(shape)?;
        let port: u16 = port.parse().map_err(|_| shape())?;
        if port == 0 {
            return Err(format!("{pattern:?} has port 0"));
        }
        let (statefulset, domain) = host.split_once('.').ok_or_else(shape)?;
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if !label_ok(statefulset) || !domain.split('.').all(label_ok) {
            return Err(shape());
        }
        Ok(Self {
            statefulset: statefulset.to_owned(),
            domain: domain.to_owned(),
            port,
        })
    }

    /// The address of the pod with `ordinal`.
    pub fn addr(&self, ordinal: u64) -> String {
        format!(
            "{}-{ordinal}.{}:{}",
            self.statefulset, self.domain, self.port
        )
    }

    /// The address of node `node_id` (≥ 1).
    pub fn node_addr(&self, node_id: u64) -> String {
        self.addr(node_id.saturating_sub(1))
    }

    /// The initial membership: pods `0..replicas` as nodes `1..=replicas`.
    pub fn peers(&self, replicas: u64) -> BTreeMap<u64, String> {
        (0..replicas)
            .map(|ordinal| (ordinal + 1, self.addr(ordinal)))
            .collect()
    }

    /// Checks that `pod` belongs to this StatefulSet.
    pub fn check_member(&self, identity: &PodIdentity) -> Result<(), String> {
        if identity.pod.statefulset == self.statefulset {
            return Ok(());
        }
        Err(format!(
            "{} {:?} is a pod of StatefulSet {:?}, but the peer pattern names StatefulSet {:?}: \
             the first label of peers_from_statefulset must be the StatefulSet's name",
            identity.source.describe(),
            identity.name,
            identity.pod.statefulset,
            self.statefulset
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        let vars: HashMap<&str, &str> = vars.iter().copied().collect();
        move |name| vars.get(name).map(|v| (*v).to_owned())
    }

    #[test]
    fn node_id_is_ordinal_plus_one() -> Result<(), String> {
        for (name, sts, id) in [
            ("raftlite-0", "raftlite", 1),
            ("raftlite-2", "raftlite", 3),
            ("my-db-11", "my-db", 12),
            ("raftlite-1.raftlite.prod.svc.cluster.local", "raftlite", 2),
        ] {
            let pod = PodName::parse(name)?;
            assert_eq!(
                (pod.statefulset.as_str(), pod.node_id()),
                (sts, id),
                "{name}"
            );
        }
        Ok(())
    }

    #[test]
    fn names_without_an_ordinal_are_refused() {
        for (name, fragment) in [
            ("0.0.0.0", "is an IP address"),
            ("10.1.2.3", "is an IP address"),
            ("::", "is an IP address"),
            ("[::1]", "is an IP address"),
            ("raftlite", "not a StatefulSet pod name"),
            ("raftlite-", "not a StatefulSet pod name"),
            ("-3", "not a StatefulSet pod name"),
            ("raftlite-x", "not a StatefulSet pod name"),
            ("raftlite-01", "not a StatefulSet pod name"),
            ("Raftlite-0", "not a StatefulSet pod name"),
            ("raft_lite-0", "not a StatefulSet pod name"),
            ("  ", "is empty"),
        ] {
            let err = PodName::parse(name).expect_err(name);
            assert!(err.contains(fragment), "{name}: {err}");
        }
    }

    #[test]
    fn pod_name_wins_over_hostname() -> Result<(), String> {
        let vars = [("POD_NAME", "raftlite-2"), ("HOSTNAME", "0.0.0.0")];
        let id = pod_identity(env(&vars), || Some("ignored-7".into()))?;
        assert_eq!(id.node_id(), 3);
        assert_eq!(id.source, NameSource::PodNameEnv);
        assert_eq!(id.describe(), "POD_NAME=raftlite-2 (ordinal 2 + 1)");
        Ok(())
    }

    #[test]
    fn falls_back_to_hostname_env_then_kernel() -> Result<(), String> {
        let id = pod_identity(env(&[("HOSTNAME", "raftlite-1")]), || None)?;
        assert_eq!((id.node_id(), id.source), (2, NameSource::HostnameEnv));
        let id = pod_identity(env(&[("POD_NAME", "")]), || Some("raftlite-4\n".into()))?;
        assert_eq!((id.node_id(), id.source), (5, NameSource::KernelHostname));
        Ok(())
    }

    #[test]
    fn the_litefs_hostname_mistake_stops_with_advice() {
        let err = pod_identity(env(&[("HOSTNAME", "0.0.0.0")]), || {
            Some("raftlite-0".into())
        })
        .expect_err("HOSTNAME=0.0.0.0");
        assert!(
            err.contains("from HOSTNAME: \"0.0.0.0\" is an IP address"),
            "{err}"
        );
        assert!(err.contains("do not override it in the image"), "{err}");
        assert!(err.contains("POD_NAME"), "{err}");

        let err = pod_identity(env(&[("POD_NAME", "web")]), || None).expect_err("no ordinal");
        assert!(
            err.contains("POD_NAME: \"web\" is not a StatefulSet pod name"),
            "{err}"
        );
        assert!(err.contains("fieldPath: metadata.name"), "{err}");

        let err = pod_identity(env(&[]), || None).expect_err("nothing");
        assert!(err.contains("POD_NAME and HOSTNAME are not set"), "{err}");
        assert!(err.contains("--node-id"), "{err}");
    }

    #[test]
    fn peers_from_the_statefulset_pattern() -> Result<(), String> {
        let sts = StatefulSetPeers::parse("raftlite.raftlite-hl.prod.svc.cluster.local:7000")?;
        assert_eq!(sts.statefulset, "raftlite");
        assert_eq!(
            sts.addr(2),
            "raftlite-2.raftlite-hl.prod.svc.cluster.local:7000"
        );
        assert_eq!(sts.node_addr(1), sts.addr(0));
        let peers = sts.peers(3);
        assert_eq!(peers.keys().copied().collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(
            peers[&1],
            "raftlite-0.raftlite-hl.prod.svc.cluster.local:7000"
        );
        assert_eq!(StatefulSetPeers::parse("db.db:1")?.addr(0), "db-0.db:1");
        Ok(())
    }

    #[test]
    fn bad_patterns_are_refused() {
        for pattern in [
            "raftlite:7000",
            "raftlite.raftlite",
            "raftlite.raftlite:0",
            "raftlite.raftlite:x",
            "http://raftlite.raftlite:7000",
            "Raftlite.raftlite:7000",
            ".raftlite:7000",
            "raftlite..x:7000",
            "raftlite-0.raftlite:70000",
        ] {
            assert!(StatefulSetPeers::parse(pattern).is_err(), "{pattern}");
        }
    }

    #[test]
    fn a_pod_of_another_statefulset_is_refused() -> Result<(), String> {
        let sts = StatefulSetPeers::parse("raftlite.raftlite:7000")?;
        let ours = pod_identity(env(&[("POD_NAME", "raftlite-1")]), || None)?;
        assert_eq!(sts.check_member(&ours), Ok(()));
        let theirs = pod_identity(env(&[("POD_NAME", "myapp-1")]), || None)?;
        let err = sts.check_member(&theirs).expect_err("other statefulset");
        assert!(err.contains("StatefulSet \"myapp\""), "{err}");
        Ok(())
    }
}
