//! The HTTP the cloud clients speak: one pooled hyper client (HTTPS with
//! the system's roots through rustls, or plain HTTP for the metadata
//! service and a local emulator), every request bounded by a timeout.

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

pub type Request = http::Request<Full<Bytes>>;

#[derive(Clone)]
pub struct Http {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
}

/// The answer: status and whole body.
pub struct Answer {
    pub status: u16,
    pub body: Bytes,
}

/// Bodies larger than this are refused: an ENI listing of a large
/// instance is tens of kilobytes.
const MAX_BODY: usize = 16 << 20;

impl Http {
    pub fn new(timeout: Duration) -> Result<Http, String> {
        let provider = || rustls::crypto::ring::default_provider();
        let builder = match hyper_rustls::HttpsConnectorBuilder::new().with_provider_and_native_roots(provider()) {
            Ok(b) => b,
            // No system roots: plain HTTP (metadata service, emulator) still
            // works; an HTTPS endpoint fails its handshake with a clear error.
            Err(_) => hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(
                rustls::ClientConfig::builder_with_provider(provider().into())
                    .with_safe_default_protocol_versions()
                    .map_err(|e| e.to_string())?
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
            ),
        };
        let connector = builder.https_or_http().enable_http1().build();
        Ok(Http {
            client: Client::builder(TokioExecutor::new()).build(connector),
            timeout,
        })
    }

    pub async fn send(&self, req: Request) -> Result<Answer, String> {
        let call = async {
            let resp = self.client.request(req).await.map_err(|e| {
                // hyper-util's error hides the cause (refused, reset, TLS) one level down.
                match std::error::Error::source(&e) {
                    Some(cause) => format!("{e}: {cause}"),
                    None => e.to_string(),
                }
            })?;
            let status = resp.status().as_u16();
            let body = http_body_util::Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| format!("reading the answer: {e}"))?
                .to_bytes();
            Ok(Answer { status, body })
        };
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| format!("no answer within {:?}", self.timeout))?
    }
}
