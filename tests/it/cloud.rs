//! The Genesys Cloud client (`exec_allinone::cloud`) against the fake cloud of
//! `support/cloud.rs`: token caching and refresh, 429 hold, error classes, streamed upload.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use exec_allinone::cloud::{CloudClient, CloudError, Presigned};
use exec_allinone::config::{GenesysCloudConfig, Secret};
use exec_allinone::http::client::HttpClient;
use md5::{Digest, Md5};

use crate::support::TempDir;
use crate::support::cloud::{Endpoint, FakeCloud, Fault};

const ID: &str = "exrp-client";
const SECRET: &str = "very-secret";
const SIGNED: Duration = Duration::from_secs(600);
const TRANSFER: Duration = Duration::from_secs(10);

fn client_with(fake: &FakeCloud, secret: &str, request_timeout: Duration) -> Arc<CloudClient> {
    let config = GenesysCloudConfig {
        api_url: fake.base_url(),
        login_url: fake.base_url(),
        client_id: ID.into(),
        client_secret: Secret::new(secret),
        outbound: Default::default(),
    };
    Arc::new(CloudClient::new(&config, HttpClient::plain(), request_timeout))
}

fn client(fake: &FakeCloud) -> Arc<CloudClient> {
    client_with(fake, SECRET, Duration::from_secs(5))
}

fn md5_b64(data: &[u8]) -> String {
    B64.encode(Md5::digest(data))
}

/// A bounded test: the whole body runs within `limit`.
fn run<F: std::future::Future<Output = ()>>(limit: Duration, body: F) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async { tokio::time::timeout(limit, body).await.expect("test took too long") });
}

async fn presign(client: &CloudClient, name: &str, data: &[u8]) -> Result<Presigned, CloudError> {
    client.presign(name, &md5_b64(data), "audio/opus", SIGNED).await
}

#[test]
fn cloud_token_is_fetched_once_for_many_concurrent_presigns() {
    let fake = FakeCloud::start(ID, SECRET);
    // A slow grant makes every presign queue behind the one fetch.
    fake.fail_next(Endpoint::Token, 1, Fault::Delay(Duration::from_millis(300)));
    let client = client(&fake);
    run(Duration::from_secs(20), async {
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let client = client.clone();
                tokio::spawn(async move { presign(&client, &format!("rec-{i}.opus"), b"x").await })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().expect("presign");
        }
        presign(&client, "later.opus", b"y").await.expect("presign");
    });
    assert_eq!(fake.token_grants(), 1);
    assert_eq!(client.stats().token_fetches.load(Ordering::Relaxed), 1);
    assert_eq!(fake.presigns_of("rec-3.opus"), 1);
    assert_eq!(fake.requests_to(Endpoint::Presign).len(), 17);
}

#[test]
fn cloud_token_is_fetched_anew_before_it_expires() {
    let fake = FakeCloud::start(ID, SECRET);
    // 2 s: refreshed 0.2 s before expiry.
    fake.set_token_lifetime(2);
    let client = client(&fake);
    run(Duration::from_secs(20), async {
        let first = client.token().await.unwrap();
        assert_eq!(client.token().await.unwrap(), first);
        tokio::time::sleep(Duration::from_millis(1900)).await;
        assert_ne!(client.token().await.unwrap(), first);
    });
    assert_eq!(fake.token_grants(), 2);
}

#[test]
fn cloud_refreshes_the_token_once_on_401() {
    let fake = FakeCloud::start(ID, SECRET);
    let client = client(&fake);
    run(Duration::from_secs(20), async {
        presign(&client, "a.opus", b"a").await.unwrap();
        fake.expire_tokens();
        presign(&client, "b.opus", b"b").await.expect("presign after the token was revoked");
        assert_eq!(client.stats().token_refreshes_on_401.load(Ordering::Relaxed), 1);
        assert_eq!(fake.token_grants(), 2);

        // A second 401 right after the refresh is the org's credentials: the org pauses.
        fake.fail_next(Endpoint::Presign, 2, Fault::Status(401));
        match presign(&client, "c.opus", b"c").await {
            Err(CloudError::Credentials { reason, retry_in }) => {
                assert!(reason.contains("presign: HTTP 401") && reason.contains("ININ-Correlation-Id"), "{reason}");
                assert_eq!(retry_in, Duration::from_secs(10));
            }
            other => panic!("expected Credentials, got {other:?}"),
        }
        assert!(client.fault().is_some_and(|f| f.failures == 1));
        // While paused nothing is sent: the answer is the fault's.
        assert!(matches!(presign(&client, "d.opus", b"d").await, Err(CloudError::Credentials { .. })));
    });
    assert_eq!(fake.token_grants(), 3);
    let statuses: Vec<u16> = fake.requests_to(Endpoint::Presign).iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 401, 200, 401, 401]);
}

#[test]
fn cloud_token_refusals_pause_the_org_with_backoff_and_a_success_clears_it() {
    let fake = FakeCloud::start(ID, SECRET);
    let wrong = CloudClient::new(
        &GenesysCloudConfig {
            api_url: fake.base_url(),
            login_url: fake.base_url(),
            client_id: ID.into(),
            client_secret: Secret::new("not-the-secret"),
            outbound: Default::default(),
        },
        HttpClient::plain(),
        Duration::from_secs(5),
    );
    run(Duration::from_secs(20), async {
        for _ in 0..5 {
            match wrong.token().await {
                Err(CloudError::Credentials { reason, .. }) => assert!(reason.contains("token: HTTP 401"), "{reason}"),
                other => panic!("expected Credentials, got {other:?}"),
            }
        }
        // 400 (a malformed or unsupported grant) and 403 count as credential faults too.
        for status in [400, 403] {
            let client = client(&fake);
            fake.fail_next(Endpoint::Token, 1, Fault::Status(status));
            assert!(matches!(client.token().await, Err(CloudError::Credentials { .. })), "{status}");
            assert!(client.fault().is_some());
        }
    });
    // Five callers, one request: the others got the fault without asking.
    assert_eq!(fake.requests_to(Endpoint::Token).len(), 3);
    assert!(wrong.fault().is_some_and(|f| f.failures == 1 && f.reason.contains("invalid_client")));
}

#[test]
fn cloud_429_returns_retry_after_and_holds_every_call() {
    let fake = FakeCloud::start(ID, SECRET);
    let client = client(&fake);
    run(Duration::from_secs(20), async {
        client.token().await.unwrap();
        fake.fail_next(Endpoint::Presign, 1, Fault::RateLimit(2));
        let limited_at = Instant::now();
        assert_eq!(presign(&client, "a.opus", b"a").await, Err(CloudError::RateLimited(Duration::from_secs(2))));
        assert!(client.held_for().is_some_and(|d| d > Duration::from_millis(1500)));
        // Other workers' calls wait out the Retry-After instead of hammering the API.
        let tasks: Vec<_> = (0..4)
            .map(|i| {
                let client = client.clone();
                tokio::spawn(async move { presign(&client, &format!("b{i}.opus"), b"b").await })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().expect("presign after the hold");
        }
        assert!(limited_at.elapsed() >= Duration::from_millis(1900), "{:?}", limited_at.elapsed());
        assert_eq!(client.held_for(), None);
    });
    assert_eq!(client.stats().rate_limited.load(Ordering::Relaxed), 1);
    let log = fake.requests_to(Endpoint::Presign);
    assert_eq!(log.len(), 5);
    assert_eq!(log[0].status, 429);
    for later in &log[1..] {
        assert!(later.at.duration_since(log[0].at) >= Duration::from_millis(1900));
    }
}

#[test]
fn cloud_429_without_a_readable_retry_after_waits_the_default() {
    let fake = FakeCloud::start(ID, SECRET);
    fake.fail_next(Endpoint::Token, 1, Fault::RateLimitRaw(None));
    let client = client(&fake);
    run(Duration::from_secs(10), async {
        assert_eq!(client.token().await, Err(CloudError::RateLimited(Duration::from_secs(30))));
        assert!(client.held_for().is_some_and(|d| d > Duration::from_secs(25)));
    });
    assert_eq!(fake.sent_429(), 1);
}

#[test]
fn cloud_server_errors_are_transient() {
    let fake = FakeCloud::start(ID, SECRET);
    let client = client(&fake);
    run(Duration::from_secs(20), async {
        fake.fail_next(Endpoint::Token, 1, Fault::Status(500));
        assert!(matches!(client.token().await, Err(CloudError::Transient(_))));
        fake.fail_next(Endpoint::Presign, 1, Fault::Status(503));
        assert!(matches!(presign(&client, "a.opus", b"a").await, Err(CloudError::Transient(_))));
        let presigned = presign(&client, "a.opus", b"a").await.unwrap();
        fake.fail_next(Endpoint::Put, 1, Fault::Status(503));
        let put = client.upload_bytes(&presigned, Bytes::from_static(b"a"), TRANSFER).await;
        assert!(matches!(put, Err(CloudError::Transient(_))), "{put:?}");
        // The same URL works once the store is back.
        client.upload_bytes(&presigned, Bytes::from_static(b"a"), TRANSFER).await.unwrap();
    });
    assert_eq!(client.stats().server_errors.load(Ordering::Relaxed), 3);
    assert_eq!(fake.uploads_of("a.opus"), 1);
}

#[test]
fn cloud_network_errors_are_transient() {
    let fake = FakeCloud::start(ID, SECRET);
    let client = client(&fake);
    let presigned = {
        let mut p = None;
        run(Duration::from_secs(10), async { p = Some(presign(&client, "a.opus", b"a").await.unwrap()) });
        p.unwrap()
    };
    drop(fake);
    run(Duration::from_secs(10), async {
        let put = client.upload_bytes(&presigned, Bytes::from_static(b"a"), TRANSFER).await;
        assert!(matches!(put, Err(CloudError::Transient(_))), "{put:?}");
    });
}

#[test]
fn cloud_bad_request_is_rejected_with_body_and_correlation_id() {
    let fake = FakeCloud::start(ID, SECRET);
    let client = client(&fake);
    run(Duration::from_secs(10), async {
        match presign(&client, "has space.opus", b"a").await {
            Err(CloudError::Rejected { status: 400, body, correlation_id: Some(id) }) => {
                let body: serde_json::Value = serde_json::from_str(&body).expect("GC JSON body");
                assert_eq!(body["code"], "bad.request");
                assert_eq!(body["contextId"], id.as_str());
            }
            other => panic!("expected Rejected 400, got {other:?}"),
        }
        // What clean_file_name makes of it is accepted.
        let name = exec_allinone::cloud::clean_file_name("has space.opus");
        presign(&client, &name, b"a").await.unwrap();
    });
    assert_eq!(fake.presigns_of("has_space.opus"), 1);
}

#[test]
fn cloud_upload_file_streams_five_mib_byte_exact() {
    let fake = FakeCloud::start(ID, SECRET);
    let client = client(&fake);
    let dir = TempDir::new("cloud-upload");
    let path = dir.join("rec.opus");
    let data: Vec<u8> = (0..5u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(&path, &data).unwrap();
    let md5 = md5_b64(&data);
    run(Duration::from_secs(30), async {
        let presigned = client.presign("call-1_media-1.opus", &md5, "audio/opus", SIGNED).await.unwrap();
        assert_eq!(presigned.headers.get("Content-MD5"), Some(&md5));
        assert!(presigned.upload_key.ends_with("/call-1_media-1.opus"));
        client.upload_file(&presigned, &path, data.len() as u64, TRANSFER).await.unwrap();

        let object = fake.object(&presigned.upload_key).expect("object stored");
        assert_eq!(object.len, data.len() as u64);
        assert_eq!(object.md5_b64, md5);
        assert_eq!(object.content_type, "audio/opus");
        assert!(object.bytes.as_deref() == Some(&data[..]), "bytes differ");
        assert_eq!(fake.puts_of(&presigned.upload_key), 1);

        // Metadata JSON from memory.
        let meta = Bytes::from_static(br#"{"conversationId":"c"}"#);
        let p = client.presign("call-1_media-1.json", &md5_b64(&meta), "application/json", SIGNED).await.unwrap();
        client.upload_bytes(&p, meta.clone(), TRANSFER).await.unwrap();
        assert_eq!(fake.object(&p.upload_key).and_then(|o| o.bytes), Some(meta.to_vec()));
    });
    assert_eq!(fake.uploads_of("call-1_media-1.opus"), 1);
    assert_eq!(fake.uploads_of("call-1_media-1.json"), 1);
    assert_eq!(fake.uploads(), (2, data.len() as u64 + 22));
}

#[test]
fn cloud_upload_with_a_wrong_md5_is_rejected() {
    let fake = FakeCloud::start(ID, SECRET);
    let client = client(&fake);
    run(Duration::from_secs(10), async {
        let presigned = presign(&client, "a.opus", b"what we announced").await.unwrap();
        match client.upload_bytes(&presigned, Bytes::from_static(b"what we sent"), TRANSFER).await {
            Err(CloudError::Rejected { status: 400, body, .. }) => assert!(body.contains("BadDigest"), "{body}"),
            other => panic!("expected Rejected 400, got {other:?}"),
        }
    });
    assert_eq!(fake.uploads_of("a.opus"), 0);
}

#[test]
fn cloud_expired_presigned_url_is_url_expired() {
    let fake = FakeCloud::start(ID, SECRET);
    let client = client(&fake);
    run(Duration::from_secs(10), async {
        // The store refuses it: 403 "Request has expired".
        fake.set_url_lifetime(Some(Duration::ZERO));
        let presigned = presign(&client, "a.opus", b"a").await.unwrap();
        assert!(!presigned.expired());
        assert_eq!(
            client.upload_bytes(&presigned, Bytes::from_static(b"a"), TRANSFER).await,
            Err(CloudError::UrlExpired)
        );
        assert_eq!(fake.puts_of(&presigned.upload_key), 1);

        // The client knows by itself: a 1 s URL is past its safety margin at once.
        fake.set_url_lifetime(None);
        let short = client.presign("b.opus", &md5_b64(b"b"), "audio/opus", Duration::from_secs(1)).await.unwrap();
        assert!(short.expired());
        assert_eq!(client.upload_bytes(&short, Bytes::from_static(b"b"), TRANSFER).await, Err(CloudError::UrlExpired));
        assert_eq!(fake.puts_of(&short.upload_key), 0);

        // A new URL works.
        let fresh = presign(&client, "a.opus", b"a").await.unwrap();
        client.upload_bytes(&fresh, Bytes::from_static(b"a"), TRANSFER).await.unwrap();
    });
    assert_eq!(fake.presigns_of("a.opus"), 2);
    assert_eq!(fake.uploads_of("a.opus"), 1);
}

#[test]
fn cloud_wrong_client_secret_is_rejected() {
    let fake = FakeCloud::start(ID, SECRET);
    let client = client_with(&fake, "not-the-secret", Duration::from_secs(5));
    run(Duration::from_secs(10), async {
        match client.token().await {
            Err(CloudError::Credentials { reason, .. }) => assert!(reason.contains("invalid_client"), "{reason}"),
            other => panic!("expected Credentials, got {other:?}"),
        }
        let err = presign(&client, "a.opus", b"a").await.unwrap_err();
        assert!(matches!(err, CloudError::Credentials { .. }), "{err:?}");
        assert!(!err.to_string().contains("not-the-secret"));
    });
    assert_eq!(fake.requests_to(Endpoint::Presign).len(), 0);
    assert_eq!(fake.token_grants(), 0);
}

#[test]
fn cloud_slow_answers_time_out_as_transient() {
    let fake = FakeCloud::start(ID, SECRET);
    let client = client_with(&fake, SECRET, Duration::from_millis(300));
    run(Duration::from_secs(20), async {
        client.token().await.unwrap();
        // The fake answers after 5 s: only the client's 300 ms timeout makes this an error.
        fake.fail_next(Endpoint::Presign, 1, Fault::Delay(Duration::from_secs(5)));
        assert!(matches!(presign(&client, "a.opus", b"a").await, Err(CloudError::Transient(_))));

        let presigned = presign(&client, "a.opus", b"a").await.unwrap();
        // Never answered: only the transfer timeout ends it, within `run`'s 20 s.
        fake.fail_next(Endpoint::Put, 1, Fault::Hang);
        let put = client.upload_bytes(&presigned, Bytes::from_static(b"a"), Duration::from_millis(500)).await;
        assert!(matches!(put, Err(CloudError::Transient(_))), "{put:?}");
    });
    // The fake saw the client give up.
    fake.wait(Duration::from_secs(5), "abandoned PUT logged", |f| {
        f.requests_to(Endpoint::Put).iter().any(|r| r.status == 0)
    });
    assert_eq!(fake.uploads_of("a.opus"), 0);
}

#[test]
fn cloud_fake_reports_objects_and_re_puts_over_http_for_scripts() {
    let fake = FakeCloud::start(ID, SECRET);
    let client = client(&fake);
    run(Duration::from_secs(10), async {
        // One object PUT twice (a resumed upload), then a second object of the same name.
        let first = presign(&client, "r.opus", b"abc").await.unwrap();
        client.upload_bytes(&first, Bytes::from_static(b"abc"), TRANSFER).await.unwrap();
        client.upload_bytes(&first, Bytes::from_static(b"abc"), TRANSFER).await.unwrap();
        let second = presign(&client, "r.opus", b"abc").await.unwrap();
        client.upload_bytes(&second, Bytes::from_static(b"abc"), TRANSFER).await.unwrap();
        let other = presign(&client, "o.opus", b"xy").await.unwrap();
        client.upload_bytes(&other, Bytes::from_static(b"xy"), TRANSFER).await.unwrap();
    });
    let get = |path: &str| -> serde_json::Value {
        let r = crate::support::client().get(format!("{}{path}", fake.base_url())).send().unwrap();
        assert_eq!(r.status(), 200, "{path}");
        serde_json::from_str(&r.text().unwrap()).unwrap()
    };
    let counts = get("/_fake/counts");
    assert_eq!((counts["uploads"].as_u64(), counts["puts"].as_u64()), (Some(3), Some(4)), "{counts}");
    assert_eq!(counts["presign_calls"], 3);
    let report = get("/_fake/report");
    let r = &report["files"]["r.opus"];
    assert_eq!((r["uploads"].as_u64(), r["puts"].as_u64()), (Some(2), Some(3)), "{report}");
    let o = &report["files"]["o.opus"]["objects"][0];
    assert_eq!((o["len"].as_u64(), o["md5"].as_str()), (Some(2), Some(md5_b64(b"xy").as_str())));
    assert_eq!(o["contentType"], "audio/opus");
    assert!(o["firstPutMs"].as_u64().unwrap() > 1_700_000_000_000);
    // Inspection is not part of the API the client sees.
    assert!(fake.requests().iter().all(|l| !l.target.starts_with("/_fake/")));
}
