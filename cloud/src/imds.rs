//! The instance metadata service (IMDSv2: a session token first, then
//! reads with it): the node's instance id and region, and the instance
//! role's credentials when none are configured.

use crate::http::Http;
use http_body_util::Full;
use hyper::body::Bytes;
use serde::Deserialize;

pub const DEFAULT_ENDPOINT: &str = "http://169.254.169.254";

#[derive(Clone)]
pub struct Imds {
    http: Http,
    base: String,
}

/// The instance role's credentials, as IMDS serves them.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RoleCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub token: String,
    /// RFC 3339.
    pub expiration: String,
}

impl Imds {
    pub fn new(http: Http, base: &str) -> Imds {
        Imds {
            http,
            base: base.trim_end_matches('/').to_string(),
        }
    }

    async fn token(&self) -> Result<String, String> {
        let req = http::Request::put(format!("{}/latest/api/token", self.base))
            .header("x-aws-ec2-metadata-token-ttl-seconds", "300")
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let a = self.http.send(req).await?;
        if a.status != 200 {
            return Err(format!("session token: HTTP {}", a.status));
        }
        String::from_utf8(a.body.to_vec()).map_err(|_| "session token is not text".into())
    }

    /// The text at `path` under `/latest/`.
    pub async fn get(&self, path: &str) -> Result<String, String> {
        let call = async {
            let token = self.token().await?;
            let req = http::Request::get(format!("{}/latest/{path}", self.base))
                .header("x-aws-ec2-metadata-token", token)
                .body(Full::new(Bytes::new()))
                .map_err(|e| e.to_string())?;
            let a = self.http.send(req).await?;
            if a.status != 200 {
                return Err(format!("HTTP {}", a.status));
            }
            String::from_utf8(a.body.to_vec()).map_err(|_| "not text".to_string())
        };
        call.await
            .map(|s| s.trim().to_string())
            .map_err(|e| format!("instance metadata {}/latest/{path}: {e}", self.base))
    }

    pub async fn instance_id(&self) -> Result<String, String> {
        self.get("meta-data/instance-id").await
    }

    pub async fn region(&self) -> Result<String, String> {
        self.get("meta-data/placement/region").await
    }

    /// The credentials of the instance's role (the first one listed).
    pub async fn role_credentials(&self) -> Result<RoleCredentials, String> {
        let roles = self.get("meta-data/iam/security-credentials/").await?;
        let role = roles
            .lines()
            .next()
            .filter(|r| !r.is_empty())
            .ok_or("the instance has no IAM role (and no credentials are configured)")?;
        let json = self.get(&format!("meta-data/iam/security-credentials/{role}")).await?;
        serde_json::from_str(&json).map_err(|e| format!("credentials of role {role}: {e}"))
    }
}
