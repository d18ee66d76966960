//! What the pool needs from a cloud, whichever cloud it is: the node's
//! instance, its ENIs, and the calls that create, attach and release ENIs
//! and their addresses. EC2 implements it ([`crate::ec2`]); an Alibaba
//! Cloud ECS backend would implement the same trait (docs/eni-cloud.md
//! says what it would need).

use ipnetwork::{Ipv4Network, Ipv6Network};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The node's instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub id: String,
    pub instance_type: String,
    /// The subnet (vSwitch) of its primary ENI: new ENIs go there unless
    /// the configuration names others.
    pub subnet_id: String,
    pub security_groups: Vec<String>,
}

/// One ENI as the cloud reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CloudEni {
    pub id: String,
    pub mac: String,
    pub subnet_id: String,
    /// `available` (attached nowhere), `in-use`, `attaching`, `detaching`.
    pub status: String,
    pub attachment: Option<Attachment>,
    pub primary_ip: Option<Ipv4Addr>,
    pub secondary_ipv4: Vec<Ipv4Addr>,
    /// Delegated /28 prefixes (EC2 prefix delegation).
    pub ipv4_prefixes: Vec<Ipv4Network>,
    pub ipv6: Vec<Ipv6Addr>,
    pub tags: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub id: String,
    pub instance_id: String,
    pub device_index: u32,
}

impl CloudEni {
    pub fn device_index(&self) -> Option<u32> {
        self.attachment.as_ref().map(|a| a.device_index)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subnet {
    pub id: String,
    pub ipv4: Ipv4Network,
    pub ipv6: Option<Ipv6Network>,
}

/// What a new ENI is made with. Tags are set by the create call itself, so
/// no ENI of ours ever exists untagged (a crash right after the create
/// leaves one the next start's collection recognises).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEni {
    pub subnet_id: String,
    pub security_groups: Vec<String>,
    pub description: String,
    pub tags: BTreeMap<String, String>,
    /// Secondary addresses to assign in the same call (IPv4 or IPv6 by the
    /// pool's family; 0 with prefix delegation).
    pub ipv4_count: u32,
    pub ipv6_count: u32,
}

/// Addresses to add to an ENI: a count, the cloud picks them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    Ipv4(u32),
    Ipv4Prefixes(u32),
    Ipv6(u32),
}

/// Addresses to take off an ENI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revoke {
    Ipv4(Vec<Ipv4Addr>),
    Ipv4Prefixes(Vec<Ipv4Network>),
    Ipv6(Vec<Ipv6Addr>),
}

impl Revoke {
    pub fn len(&self) -> usize {
        match self {
            Revoke::Ipv4(v) => v.len(),
            Revoke::Ipv4Prefixes(v) => v.len(),
            Revoke::Ipv6(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn addresses(&self) -> Vec<IpAddr> {
        match self {
            Revoke::Ipv4(v) => v.iter().map(|a| IpAddr::V4(*a)).collect(),
            Revoke::Ipv4Prefixes(v) => v.iter().flat_map(|p| p.iter().map(IpAddr::V4)).collect(),
            Revoke::Ipv6(v) => v.iter().map(|a| IpAddr::V6(*a)).collect(),
        }
    }
}

/// A failed cloud call, after the retries the client makes itself.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CloudError {
    /// The API answered with an error code (`RequestLimitExceeded`,
    /// `InsufficientFreeAddressesInSubnet`, `UnauthorizedOperation`, …).
    #[error("{action}: {code} (HTTP {status}): {message}")]
    Api {
        action: String,
        status: u16,
        code: String,
        message: String,
    },
    /// No answer: connection refused or reset, timeout, TLS.
    #[error("{action}: {message}")]
    Transport { action: String, message: String },
    /// An answer that does not say what it should.
    #[error("{action}: unexpected answer: {message}")]
    Answer { action: String, message: String },
    /// Something local: credentials, region, instance id.
    #[error("{0}")]
    Setup(String),
}

/// Error codes that mean "slow down", EC2's and the generic AWS ones.
const THROTTLED: &[&str] = &[
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "RequestThrottled",
    "TooManyRequestsException",
];

/// The subnet or the ENI has no address left to give.
const NO_ADDRESSES: &[&str] = &[
    "InsufficientFreeAddressesInSubnet",
    "InsufficientCidrBlocks",
    "PrivateIpAddressLimitExceeded",
];

impl CloudError {
    pub fn code(&self) -> Option<&str> {
        match self {
            CloudError::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    pub fn is_throttled(&self) -> bool {
        self.code().is_some_and(|c| THROTTLED.contains(&c))
    }

    /// Worth trying again: throttled, a server error, or no answer.
    pub fn is_retryable(&self) -> bool {
        match self {
            CloudError::Api { status, .. } => self.is_throttled() || *status >= 500,
            CloudError::Transport { .. } => true,
            _ => false,
        }
    }

    pub fn is_out_of_addresses(&self) -> bool {
        self.code().is_some_and(|c| NO_ADDRESSES.contains(&c))
    }

    /// The `result` label of the cloud-call counter.
    pub fn result_label(&self) -> &'static str {
        match self {
            CloudError::Api { .. } if self.is_throttled() => "throttled",
            CloudError::Api { status, .. } if *status >= 500 => "server_error",
            CloudError::Api { .. } => "client_error",
            CloudError::Transport { .. } => "transport_error",
            CloudError::Answer { .. } | CloudError::Setup(_) => "bad_answer",
        }
    }
}

/// A cloud's ENI API. Methods are async: the pool runs them on its own
/// one-thread runtime, so no `Send` bound is asked of the futures.
#[allow(async_fn_in_trait)]
pub trait Cloud {
    /// For logs: which API, which endpoint.
    fn describe(&self) -> String;
    async fn instance(&self) -> Result<Instance, CloudError>;
    /// ENIs attached to `instance`.
    async fn attached_enis(&self, instance: &str) -> Result<Vec<CloudEni>, CloudError>;
    /// ENIs carrying every one of `tags`, attached or not.
    async fn tagged_enis(&self, tags: &BTreeMap<String, String>) -> Result<Vec<CloudEni>, CloudError>;
    async fn subnet(&self, id: &str) -> Result<Subnet, CloudError>;
    async fn create_eni(&self, new: &NewEni) -> Result<CloudEni, CloudError>;
    /// Returns the attachment id.
    async fn attach_eni(&self, eni: &str, instance: &str, device_index: u32) -> Result<String, CloudError>;
    async fn detach_eni(&self, attachment: &str) -> Result<(), CloudError>;
    async fn delete_eni(&self, eni: &str) -> Result<(), CloudError>;
    async fn grant(&self, eni: &str, grant: Grant) -> Result<(), CloudError>;
    async fn revoke(&self, eni: &str, revoke: &Revoke) -> Result<(), CloudError>;
}
