//! Restoring packs kept in an archive storage class (S3 Glacier and its
//! likes): a GET of such an object is refused until a RestoreObject made
//! a temporary copy readable. object_store has no RestoreObject, so it is
//! sent here: one SigV4-signed POST (object_store's own signer and
//! credentials), path-style like the rest of the store's requests.

use std::sync::Arc;

use object_store::aws::{AmazonS3, AwsAuthorizer};
use object_store::client::{HttpClient, HttpRequestBody};
use object_store::path::Path;

/// Days a restored copy stays readable: long enough for a recall and a
/// re-heat of what was read, short enough not to pay for a second copy
/// for long.
const RESTORE_DAYS: u32 = 7;

pub struct Restorer {
    s3: Arc<AmazonS3>,
    /// `AWS_ENDPOINT_URL`, else AWS's regional endpoint.
    endpoint: String,
    bucket: String,
    region: String,
    http: HttpClient,
}

impl Restorer {
    pub fn new(
        s3: Arc<AmazonS3>,
        endpoint: Option<String>,
        bucket: String,
        region: String,
    ) -> Self {
        let endpoint = endpoint
            .map(|e| e.trim_end_matches('/').to_string())
            .unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
        Self {
            s3,
            endpoint,
            bucket,
            region,
            http: HttpClient::new(reqwest::Client::new()),
        }
    }

    /// Asks for `key` to be restored; a restore already running (409) or
    /// a copy already readable (200) is fine too.
    pub async fn restore(&self, key: &Path) -> Result<(), String> {
        let url = format!("{}/{}/{}?restore", self.endpoint, self.bucket, key);
        let body = format!(
            "<RestoreRequest xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Days>{RESTORE_DAYS}</Days></RestoreRequest>"
        );
        let mut request = http::Request::builder()
            .method(http::Method::POST)
            .uri(&url)
            .header(http::header::CONTENT_TYPE, "application/xml")
            .body(HttpRequestBody::from(body))
            .map_err(|e| format!("request: {e}"))?;
        let credential = self
            .s3
            .credentials()
            .get_credential()
            .await
            .map_err(|e| format!("credentials: {e}"))?;
        AwsAuthorizer::new(&credential, "s3", &self.region).authorize(&mut request, None);
        let response = self
            .http
            .execute(request)
            .await
            .map_err(|e| format!("POST {url}: {e}"))?;
        match response.status().as_u16() {
            200 | 202 | 409 => Ok(()),
            status => Err(format!("POST {url}: HTTP {status}")),
        }
    }
}
