//! EC2 over its Query API: form-encoded POSTs signed with SigV4, XML
//! answers. Every call is retried here when throttled, on a server error
//! or without an answer, with jittered backoff; each attempt is counted.

pub mod xml;

use crate::api::{Cloud, CloudEni, CloudError, Grant, Instance, NewEni, Revoke, Subnet};
use crate::http::Http;
use crate::imds::Imds;
use crate::metrics::PoolMetrics;
use crate::retry::Backoff;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4::SigningParams;
use http_body_util::Full;
use hyper::body::Bytes;
use serde::Deserialize;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

/// The API version every action is sent with.
const VERSION: &str = "2016-11-15";
const FORM: &str = "application/x-www-form-urlencoded; charset=utf-8";

/// The `ec2` section of the pool's configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Ec2Config {
    /// Default: the instance metadata's region.
    pub region: Option<String>,
    /// Default: `https://ec2.REGION.amazonaws.com`. An `http://` endpoint
    /// is for a local emulator.
    pub endpoint: Option<String>,
    /// Default: the instance metadata's.
    pub instance_id: Option<String>,
    /// The instance metadata service.
    pub metadata_endpoint: Option<String>,
    /// `auto`: the environment's (`AWS_ACCESS_KEY_ID`, …), else the
    /// instance role's; `instanceRole`: the role's, whatever the
    /// environment holds.
    #[serde(default)]
    pub credentials: CredentialSource,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum CredentialSource {
    #[default]
    Auto,
    InstanceRole,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
    /// None: static.
    pub expires: Option<SystemTime>,
}

impl Credentials {
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`.
    pub fn from_env() -> Option<Credentials> {
        let get = |k| std::env::var(k).ok().filter(|v: &String| !v.is_empty());
        Some(Credentials {
            access_key_id: get("AWS_ACCESS_KEY_ID")?,
            secret_access_key: get("AWS_SECRET_ACCESS_KEY")?,
            session_token: get("AWS_SESSION_TOKEN"),
            expires: None,
        })
    }

    fn fresh(&self) -> bool {
        // Renewed five minutes early: a request signed now may be retried later.
        self.expires
            .is_none_or(|e| e > SystemTime::now() + Duration::from_secs(300))
    }
}

pub struct Ec2 {
    http: Http,
    endpoint: String,
    host: String,
    region: String,
    instance_id: String,
    imds: Imds,
    credentials: RefCell<Option<Credentials>>,
    from_role: bool,
    backoff: Backoff,
    metrics: PoolMetrics,
}

impl Ec2 {
    /// Resolve what the configuration leaves out from the instance
    /// metadata; credentials from the environment, else the instance role.
    pub async fn new(cfg: &Ec2Config, metrics: PoolMetrics) -> Result<Ec2, CloudError> {
        let env = match cfg.credentials {
            CredentialSource::Auto => Credentials::from_env(),
            CredentialSource::InstanceRole => None,
        };
        Ec2::build(cfg, env, metrics).await
    }

    /// With these credentials, not the environment's or the role's.
    pub async fn new_with_credentials(
        cfg: &Ec2Config,
        credentials: Credentials,
        metrics: PoolMetrics,
    ) -> Result<Ec2, CloudError> {
        Ec2::build(cfg, Some(credentials), metrics).await
    }

    async fn build(cfg: &Ec2Config, env: Option<Credentials>, metrics: PoolMetrics) -> Result<Ec2, CloudError> {
        let http = Http::new(Duration::from_secs(20)).map_err(CloudError::Setup)?;
        let imds = Imds::new(
            http.clone(),
            cfg.metadata_endpoint
                .as_deref()
                .unwrap_or(crate::imds::DEFAULT_ENDPOINT),
        );
        let region = match &cfg.region {
            Some(r) => r.clone(),
            None => imds.region().await.map_err(CloudError::Setup)?,
        };
        let instance_id = match &cfg.instance_id {
            Some(i) => i.clone(),
            None => imds.instance_id().await.map_err(CloudError::Setup)?,
        };
        let endpoint = cfg
            .endpoint
            .clone()
            .unwrap_or_else(|| format!("https://ec2.{region}.amazonaws.com/"));
        let uri: http::Uri = endpoint
            .parse()
            .map_err(|_| CloudError::Setup(format!("EC2 endpoint {endpoint:?} is not a URL")))?;
        let host = match (uri.scheme_str(), uri.authority()) {
            (Some("https" | "http"), Some(a)) => a.to_string(),
            _ => {
                return Err(CloudError::Setup(format!(
                    "EC2 endpoint {endpoint:?}: give http(s)://HOST[:PORT]/"
                )));
            }
        };
        Ok(Ec2 {
            from_role: env.is_none(),
            credentials: RefCell::new(env),
            http,
            endpoint: if uri.path().is_empty() {
                format!("{endpoint}/")
            } else {
                endpoint
            },
            host,
            region,
            instance_id,
            imds,
            backoff: Backoff::default(),
            metrics,
        })
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    async fn credentials(&self) -> Result<Credentials, CloudError> {
        if let Some(c) = self.credentials.borrow().as_ref()
            && (c.fresh() || !self.from_role)
        {
            return Ok(c.clone());
        }
        let role = self.imds.role_credentials().await.map_err(CloudError::Setup)?;
        let expires = role.expiration.parse::<jiff::Timestamp>().ok().map(SystemTime::from);
        let c = Credentials {
            access_key_id: role.access_key_id,
            secret_access_key: role.secret_access_key,
            session_token: Some(role.token),
            expires: Some(expires.unwrap_or_else(|| SystemTime::now() + Duration::from_secs(600))),
        };
        *self.credentials.borrow_mut() = Some(c.clone());
        Ok(c)
    }

    fn signed(&self, body: String, creds: &Credentials) -> Result<crate::http::Request, String> {
        let identity = aws_credential_types::Credentials::new(
            &creds.access_key_id,
            &creds.secret_access_key,
            creds.session_token.clone(),
            None,
            "sluice",
        )
        .into();
        let params = SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("ec2")
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| format!("signing: {e}"))?
            .into();
        let headers = [("content-type", FORM), ("host", self.host.as_str())];
        let signable = SignableRequest::new(
            "POST",
            self.endpoint.as_str(),
            headers.into_iter(),
            SignableBody::Bytes(body.as_bytes()),
        )
        .map_err(|e| format!("signing: {e}"))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| format!("signing: {e}"))?
            .into_parts();
        let mut req = http::Request::post(&self.endpoint)
            .header("content-type", FORM)
            .header("host", &self.host)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        instructions.apply_to_request_http1x(&mut req);
        Ok(req)
    }

    /// One action, retried as [`Backoff`] says; the answer's text.
    async fn call(&self, action: &str, params: &[(String, String)]) -> Result<String, CloudError> {
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("Action", action).append_pair("Version", VERSION);
        for (k, v) in params {
            form.append_pair(k, v);
        }
        let body = form.finish();
        let mut attempt = 1;
        loop {
            let err = match self.attempt(action, &body).await {
                Ok(text) => {
                    self.metrics.call(action, "ok");
                    return Ok(text);
                }
                Err(e) => e,
            };
            self.metrics.call(action, err.result_label());
            if !err.is_retryable() || attempt >= self.backoff.attempts {
                return Err(err);
            }
            let wait = self.backoff.wait(attempt);
            tracing::debug!(action, attempt, ?wait, error = %err, "EC2 call failed, trying again");
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    async fn attempt(&self, action: &str, body: &str) -> Result<String, CloudError> {
        let creds = self.credentials().await?;
        let transport = |message: String| CloudError::Transport {
            action: action.to_string(),
            message,
        };
        let req = self.signed(body.to_string(), &creds).map_err(CloudError::Setup)?;
        let answer = self.http.send(req).await.map_err(transport)?;
        let text = String::from_utf8_lossy(&answer.body).into_owned();
        if answer.status == 200 {
            return Ok(text);
        }
        let (code, message) = xml::error(&text).unwrap_or_else(|| {
            let snippet: String = text.chars().take(200).collect();
            (format!("HTTP{}", answer.status), snippet)
        });
        Err(CloudError::Api {
            action: action.to_string(),
            status: answer.status,
            code,
            message,
        })
    }

    async fn call_xml<T>(
        &self,
        action: &str,
        params: &[(String, String)],
        read: impl FnOnce(&roxmltree::Document) -> Result<T, String>,
    ) -> Result<T, CloudError> {
        let text = self.call(action, params).await?;
        let answer = |message: String| CloudError::Answer {
            action: action.to_string(),
            message,
        };
        let doc = xml::parse(&text).map_err(answer)?;
        read(&doc).map_err(answer)
    }

    async fn describe_enis(&self, filters: &[(&str, &str)]) -> Result<Vec<CloudEni>, CloudError> {
        let mut base = Vec::new();
        for (i, (name, value)) in filters.iter().enumerate() {
            base.push((format!("Filter.{}.Name", i + 1), name.to_string()));
            base.push((format!("Filter.{}.Value.1", i + 1), value.to_string()));
        }
        let mut all = Vec::new();
        let mut token: Option<String> = None;
        // Bounded: a thousand pages is far beyond any account's ENIs.
        for _ in 0..1000 {
            let mut params = base.clone();
            if let Some(t) = &token {
                params.push(("NextToken".into(), t.clone()));
            }
            let (page, next) = self.call_xml("DescribeNetworkInterfaces", &params, xml::enis).await?;
            all.extend(page);
            match next {
                Some(t) => token = Some(t),
                None => return Ok(all),
            }
        }
        Err(CloudError::Answer {
            action: "DescribeNetworkInterfaces".into(),
            message: "more than 1000 pages".into(),
        })
    }
}

fn p(k: impl Into<String>, v: impl ToString) -> (String, String) {
    (k.into(), v.to_string())
}

impl Cloud for Ec2 {
    fn describe(&self) -> String {
        format!("EC2 {} ({})", self.endpoint, self.region)
    }

    async fn instance(&self) -> Result<Instance, CloudError> {
        let id = self.instance_id.clone();
        self.call_xml("DescribeInstances", &[p("InstanceId.1", &id)], |d| {
            xml::instance(d, &id)
        })
        .await
    }

    async fn attached_enis(&self, instance: &str) -> Result<Vec<CloudEni>, CloudError> {
        self.describe_enis(&[("attachment.instance-id", instance)]).await
    }

    async fn tagged_enis(&self, tags: &BTreeMap<String, String>) -> Result<Vec<CloudEni>, CloudError> {
        let names: Vec<String> = tags.keys().map(|k| format!("tag:{k}")).collect();
        let filters: Vec<(&str, &str)> = names
            .iter()
            .map(String::as_str)
            .zip(tags.values().map(String::as_str))
            .collect();
        let all = self.describe_enis(&filters).await?;
        // Filtered again here: the answer is trusted for nothing it is asked to ensure.
        Ok(all
            .into_iter()
            .filter(|e| tags.iter().all(|(k, v)| e.tags.get(k) == Some(v)))
            .collect())
    }

    async fn subnet(&self, id: &str) -> Result<Subnet, CloudError> {
        self.call_xml("DescribeSubnets", &[p("SubnetId.1", id)], |d| xml::subnet(d, id))
            .await
    }

    async fn create_eni(&self, new: &NewEni) -> Result<CloudEni, CloudError> {
        let mut params = vec![p("SubnetId", &new.subnet_id), p("Description", &new.description)];
        for (i, g) in new.security_groups.iter().enumerate() {
            params.push(p(format!("SecurityGroupId.{}", i + 1), g));
        }
        if new.ipv4_count > 0 {
            params.push(p("SecondaryPrivateIpAddressCount", new.ipv4_count));
        }
        if new.ipv6_count > 0 {
            params.push(p("Ipv6AddressCount", new.ipv6_count));
        }
        params.push(p("TagSpecification.1.ResourceType", "network-interface"));
        for (i, (k, v)) in new.tags.iter().enumerate() {
            params.push(p(format!("TagSpecification.1.Tag.{}.Key", i + 1), k));
            params.push(p(format!("TagSpecification.1.Tag.{}.Value", i + 1), v));
        }
        self.call_xml("CreateNetworkInterface", &params, xml::created_eni).await
    }

    async fn attach_eni(&self, eni: &str, instance: &str, device_index: u32) -> Result<String, CloudError> {
        let params = [
            p("NetworkInterfaceId", eni),
            p("InstanceId", instance),
            p("DeviceIndex", device_index),
        ];
        self.call_xml("AttachNetworkInterface", &params, xml::attachment_id)
            .await
    }

    async fn detach_eni(&self, attachment: &str) -> Result<(), CloudError> {
        self.call("DetachNetworkInterface", &[p("AttachmentId", attachment)])
            .await
            .map(drop)
    }

    async fn delete_eni(&self, eni: &str) -> Result<(), CloudError> {
        self.call("DeleteNetworkInterface", &[p("NetworkInterfaceId", eni)])
            .await
            .map(drop)
    }

    async fn grant(&self, eni: &str, grant: Grant) -> Result<(), CloudError> {
        let id = p("NetworkInterfaceId", eni);
        let (action, params) = match grant {
            Grant::Ipv4(n) => (
                "AssignPrivateIpAddresses",
                vec![id, p("SecondaryPrivateIpAddressCount", n)],
            ),
            Grant::Ipv4Prefixes(n) => ("AssignPrivateIpAddresses", vec![id, p("Ipv4PrefixCount", n)]),
            Grant::Ipv6(n) => ("AssignIpv6Addresses", vec![id, p("Ipv6AddressCount", n)]),
        };
        self.call(action, &params).await.map(drop)
    }

    async fn revoke(&self, eni: &str, revoke: &Revoke) -> Result<(), CloudError> {
        let mut params = vec![p("NetworkInterfaceId", eni)];
        let action = match revoke {
            Revoke::Ipv4(ips) => {
                params.extend(
                    ips.iter()
                        .enumerate()
                        .map(|(i, a)| p(format!("PrivateIpAddress.{}", i + 1), a)),
                );
                "UnassignPrivateIpAddresses"
            }
            Revoke::Ipv4Prefixes(ps) => {
                params.extend(
                    ps.iter()
                        .enumerate()
                        .map(|(i, a)| p(format!("Ipv4Prefix.{}", i + 1), a)),
                );
                "UnassignPrivateIpAddresses"
            }
            Revoke::Ipv6(ips) => {
                params.extend(
                    ips.iter()
                        .enumerate()
                        .map(|(i, a)| p(format!("Ipv6Addresses.{}", i + 1), a)),
                );
                "UnassignIpv6Addresses"
            }
        };
        self.call(action, &params).await.map(drop)
    }
}
