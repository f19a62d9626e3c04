//! The S3 client against real Garage: a 3-node cluster on loopback (replication factor 3).
//! Every call a recording store needs, through one node and read through another; a node
//! SIGKILLed changes nothing the client sees; wrong credentials and the bucket's quota are
//! told apart from transient faults.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use exec_allinone::config::Secret;
use exec_allinone::s3::client::{S3Client, S3Error, Target};
use exec_allinone::s3::sigv4::Credentials;

use crate::support::garage::{Garage, REGION};

fn client(g: &Garage, node: usize, secret: &str) -> S3Client {
    S3Client::new(target_of(g, node, secret), &Default::default(), Duration::from_secs(10), Duration::from_secs(120))
        .unwrap()
}

fn target_of(g: &Garage, node: usize, secret: &str) -> Target {
    Target {
        endpoints: vec![g.endpoint(node)],
        bucket: g.bucket.clone(),
        path_style: true,
        credentials: Credentials {
            access_key_id: g.key_id.clone(),
            secret_access_key: Secret::new(secret),
            region: REGION.into(),
        },
    }
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(120), f).await.expect("within 2 minutes") })
}

fn meta(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn the_s3_client_does_what_a_store_needs_on_a_garage_cluster() {
    let mut g = Garage::start("rec");
    let (c0, c1, c2) = (client(&g, 0, &g.secret), client(&g, 1, &g.secret), client(&g, 2, &g.secret));
    block_on(async {
        // A new cluster may take a moment to serve: the first PUT is retried while transient.
        let body = Bytes::from_static(b"OggS recording bytes 0123456789");
        let md5_hex: String = <md5::Md5 as md5::Digest>::digest(&body).iter().map(|b| format!("{b:02x}")).collect();
        let props = meta(&[("dav-props", "<x>1</x>"), ("accepted-at", "1796632513755")]);
        let mut tries = 0;
        let etag = loop {
            match c0.put("recordings/SIM1_0.opus", body.clone(), &props).await {
                Ok(etag) => break etag,
                Err(e) if e.is_transient() && tries < 50 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("put: {e}"),
            }
        };
        assert_eq!(etag, md5_hex);

        // Read through the other nodes: the head with its metadata, a range, the listing.
        let head = c1.head("recordings/SIM1_0.opus").await.unwrap();
        assert_eq!((head.len, head.etag.as_str()), (body.len() as u64, md5_hex.as_str()));
        assert_eq!(head.metadata, props);
        assert!(head.last_modified.is_some());
        let (range_head, response) = c2.get("recordings/SIM1_0.opus", Some((5, 14)), None).await.unwrap();
        assert_eq!(range_head.len, body.len() as u64, "the whole length, from Content-Range");
        assert_eq!(&response.bytes().await.unwrap()[..], &body[5..=14]);
        // A read of one version: the current one by its ETag, another (replaced since) refused.
        let (_, same) = c1.get("recordings/SIM1_0.opus", Some((0, 3)), Some(&etag)).await.unwrap();
        assert_eq!(&same.bytes().await.unwrap()[..], &body[..4]);
        let stale = c1.get("recordings/SIM1_0.opus", Some((0, 3)), Some("0123456789abcdef0123456789abcdef")).await;
        assert!(matches!(stale, Err(S3Error::Precondition(_))), "{:?}", stale.map(|_| ()));
        c0.put("recordings/sub/x.opus", Bytes::from_static(b"x"), &BTreeMap::new()).await.unwrap();
        let page = c1.list("recordings/", Some("/"), None).await.unwrap();
        let keys: Vec<&str> = page.objects.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(keys, ["recordings/SIM1_0.opus"]);
        assert_eq!(page.prefixes, ["recordings/sub/"]);

        // A copy with other metadata (a MOVE, a PROPPATCH), then the source's delete.
        let new_props = meta(&[("dav-props", "<x>2</x>")]);
        c0.copy("recordings/SIM1_0.opus", "recordings/SIM1_0.moved", Some(&new_props)).await.unwrap();
        assert_eq!(c2.head("recordings/SIM1_0.moved").await.unwrap().metadata, new_props);
        c0.delete("recordings/SIM1_0.opus").await.unwrap();
        assert!(matches!(c1.head("recordings/SIM1_0.opus").await, Err(S3Error::NotFound(_))));
        assert!(matches!(c1.get("recordings/none.opus", None, None).await, Err(S3Error::NotFound(_))));
        // A bucket that does not exist is not found; an endpoint that is not a URL is refused.
        let no_bucket = Target { bucket: "no-such-bucket".into(), ..target_of(&g, 0, &g.secret) };
        let elsewhere =
            S3Client::new(no_bucket, &Default::default(), Duration::from_secs(10), Duration::from_secs(120)).unwrap();
        let missing = elsewhere.head("x").await;
        assert!(matches!(missing, Err(S3Error::NotFound(_) | S3Error::Refused(_))), "{missing:?}");
        let ftp = Target { endpoints: vec!["ftp://x".into()], ..target_of(&g, 0, &g.secret) };
        assert!(S3Client::new(ftp, &Default::default(), Duration::from_secs(1), Duration::from_secs(1)).is_err());

        // Multipart: visible only when completed, whole; an aborted one never.
        let part = Bytes::from(vec![7u8; 5 << 20]);
        let last = Bytes::from_static(b"the end");
        let id = c0.create_multipart("recordings/big.opus", &props).await.unwrap();
        let e1 = c0.upload_part("recordings/big.opus", &id, 1, part.clone()).await.unwrap();
        assert!(matches!(c1.head("recordings/big.opus").await, Err(S3Error::NotFound(_))), "not before completion");
        let e2 = c0.upload_part("recordings/big.opus", &id, 2, last.clone()).await.unwrap();
        c0.complete_multipart("recordings/big.opus", &id, &[e1, e2]).await.unwrap();
        let (big, response) = c2.get("recordings/big.opus", None, None).await.unwrap();
        assert_eq!(big.len, (5 << 20) + 7);
        assert_eq!(big.metadata, props);
        let got = response.bytes().await.unwrap();
        assert!(got[..5 << 20].iter().all(|b| *b == 7) && &got[5 << 20..] == b"the end");
        let id = c0.create_multipart("recordings/aborted.opus", &BTreeMap::new()).await.unwrap();
        c0.upload_part("recordings/aborted.opus", &id, 1, last.clone()).await.unwrap();
        c0.abort_multipart("recordings/aborted.opus", &id).await.unwrap();
        assert!(matches!(c1.head("recordings/aborted.opus").await, Err(S3Error::NotFound(_))));

        // Wrong credentials are refused, not retried.
        let wrong = client(&g, 0, "not-the-secret");
        let refused = wrong.put("recordings/w.opus", last.clone(), &BTreeMap::new()).await;
        assert!(matches!(refused, Err(S3Error::Refused(_))), "{refused:?}");
    });

    // One node SIGKILLed: the other two still hold a quorum; nothing changes for the client.
    g.kill(2);
    block_on(async {
        c0.put("recordings/after-kill.opus", Bytes::from_static(b"still"), &BTreeMap::new()).await.unwrap();
        let (_, r) = c1.get("recordings/after-kill.opus", None, None).await.unwrap();
        assert_eq!(&r.bytes().await.unwrap()[..], b"still");
        assert_eq!(c1.head("recordings/big.opus").await.unwrap().len, (5 << 20) + 7);
    });
    // A client given every node goes on past the dead one, for reads and writes alike.
    let nodes = Target { endpoints: vec![g.endpoint(2), g.endpoint(0), g.endpoint(1)], ..target_of(&g, 0, &g.secret) };
    let failover =
        S3Client::new(nodes, &Default::default(), Duration::from_secs(10), Duration::from_secs(120)).unwrap();
    block_on(async {
        assert_eq!(failover.head("recordings/big.opus").await.unwrap().len, (5 << 20) + 7);
        failover.put("recordings/failover.opus", Bytes::from_static(b"on"), &BTreeMap::new()).await.unwrap();
        let (_, r) = c1.get("recordings/failover.opus", None, None).await.unwrap();
        assert_eq!(&r.bytes().await.unwrap()[..], b"on");
        failover.delete("recordings/failover.opus").await.unwrap();
    });

    // The bucket's quota, one figure for every front end: past it, Quota (the store's 507).
    g.cli(0, &["bucket", "set-quotas", "rec", "--max-size", "6MiB"]);
    block_on(async {
        let over = c0.put("recordings/over.opus", Bytes::from(vec![1u8; 2 << 20]), &BTreeMap::new()).await;
        assert!(matches!(over, Err(S3Error::Quota(_))), "{over:?}");
    });
}

/// The store's promises on a bucket: an upload is visible only whole and only at its declared
/// length (one PUT, or multipart past a part, aborted when short or dropped), a collection is
/// listed one level deep, dead properties survive a MOVE, DELETE of a missing file says so.
#[test]
fn the_s3_store_keeps_the_disk_store_s_promises_on_garage() {
    use exec_allinone::s3::store::{PART, S3Store, UploadError};
    let g = Garage::start("store");
    let store = S3Store::new(client(&g, 0, &g.secret), "/recordings/");
    let other = S3Store::new(client(&g, 1, &g.secret), "recordings");
    block_on(async {
        // The first write of a new cluster is retried while it settles.
        let mut tries = 0;
        loop {
            let mut up = store.upload("warm.opus", Some(1));
            up.write(b"w").await.unwrap();
            match up.commit().await {
                Ok(()) => break,
                Err(UploadError::S3(e)) if e.is_transient() && tries < 50 => tries += 1,
                Err(e) => panic!("{e}"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        // Small: one PUT, visible only at commit.
        let mut up = store.upload("SIM1_0.opus", Some(10));
        up.write(b"01234").await.unwrap();
        assert!(matches!(other.head("SIM1_0.opus").await, Err(S3Error::NotFound(_))), "nothing before commit");
        up.write(b"56789").await.unwrap();
        up.commit().await.unwrap();
        assert_eq!(other.head("SIM1_0.opus").await.unwrap().len, 10);

        // Large: multipart, written in odd pieces, whole at commit.
        let total = 2 * PART + 12345;
        let data: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
        let mut up = store.upload("big/SIM2_0.opus", Some(total as u64));
        for piece in data.chunks(777_777) {
            up.write(piece).await.unwrap();
        }
        assert!(matches!(other.head("big/SIM2_0.opus").await, Err(S3Error::NotFound(_))));
        up.commit().await.unwrap();
        let (head, body) = other.get("big/SIM2_0.opus", None, None).await.unwrap();
        assert_eq!(head.len, total as u64);
        assert!(body.bytes().await.unwrap()[..] == data[..], "byte for byte");

        // Short or long bodies never become objects; a dropped multipart leaves nothing.
        let mut up = store.upload("short.opus", Some(10));
        up.write(b"0123").await.unwrap();
        assert!(matches!(up.commit().await, Err(UploadError::Length { got: 4, declared: Some(10) })));
        let mut up = store.upload("long.opus", Some(3));
        assert!(matches!(up.write(b"0123").await, Err(UploadError::Length { got: 4, declared: Some(3) })));
        let mut up = store.upload("dropped.opus", Some((PART * 2) as u64));
        up.write(&vec![1u8; PART + 1]).await.unwrap();
        drop(up);
        for name in ["short.opus", "long.opus", "dropped.opus"] {
            assert!(matches!(other.head(name).await, Err(S3Error::NotFound(_))), "{name}");
        }

        // One level deep.
        let root = other.list("").await.unwrap();
        let files: Vec<&str> = root.files.iter().map(|f| f.key.as_str()).collect();
        assert_eq!(files, ["SIM1_0.opus", "warm.opus"]);
        assert_eq!(root.collections, ["big"]);
        let big = other.list("big").await.unwrap();
        assert_eq!((big.files.len(), big.files[0].key.as_str()), (1, "SIM2_0.opus"));

        // Dead properties: set, read through another node, carried by a MOVE; past what
        // metadata holds, through a sidecar the listing does not show.
        assert_eq!(store.props("SIM1_0.opus").await.unwrap(), None);
        let xml = "<D:prop xmlns:D=\"DAV:\"><x:job xmlns:x=\"urn:exec\">accepted é</x:job></D:prop>";
        store.set_props("SIM1_0.opus", xml).await.unwrap();
        assert_eq!(other.props("SIM1_0.opus").await.unwrap().as_deref(), Some(xml));
        store.rename("SIM1_0.opus", "moved/SIM1_0.opus").await.unwrap();
        assert!(matches!(other.head("SIM1_0.opus").await, Err(S3Error::NotFound(_))));
        assert_eq!(other.props("moved/SIM1_0.opus").await.unwrap().as_deref(), Some(xml));
        let big_xml =
            format!("<D:prop xmlns:D=\"DAV:\"><x:job xmlns:x=\"urn:exec\">{}</x:job></D:prop>", "y".repeat(5000));
        store.set_props("warm.opus", &big_xml).await.unwrap();
        assert_eq!(other.props("warm.opus").await.unwrap().as_deref(), Some(big_xml.as_str()));
        store.rename("warm.opus", "moved/warm.opus").await.unwrap();
        assert_eq!(other.props("moved/warm.opus").await.unwrap().as_deref(), Some(big_xml.as_str()));
        assert!(other.list("").await.unwrap().collections.iter().all(|c| !c.starts_with('.')), "sidecars hidden");
        store.delete("moved/warm.opus").await.unwrap();
        let (_, body) = other.get("moved/SIM1_0.opus", Some((2, 4)), None).await.unwrap();
        assert_eq!(&body.bytes().await.unwrap()[..], b"234");

        store.delete("moved/SIM1_0.opus").await.unwrap();
        assert!(matches!(store.delete("moved/SIM1_0.opus").await, Err(S3Error::NotFound(_))));
    });
}

/// A PROPPATCH cut off at any point (its client gone, the future dropped) leaves a file with
/// its old properties or its new ones, never none: properties are set 60 times, each cut
/// after a different delay, alternating sizes that live inline and in a sidecar.
#[test]
fn properties_cut_off_at_any_point_are_old_or_new_never_gone() {
    use exec_allinone::s3::store::S3Store;
    let g = Garage::start("cutoff");
    let store = S3Store::new(client(&g, 0, &g.secret), "recordings");
    block_on(async {
        let mut tries = 0;
        loop {
            let mut up = store.upload("f.opus", Some(3));
            up.write(b"abc").await.unwrap();
            match up.commit().await {
                Ok(()) => break,
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("{e}"),
            }
        }
        let xml = |n: usize| if n % 2 == 0 { format!("<x>{n}</x>") } else { format!("<x>{n}{}</x>", "y".repeat(3000)) };
        store.set_props("f.opus", &xml(0)).await.unwrap();
        let mut last = xml(0);
        for n in 1..=60usize {
            let cut = Duration::from_millis((n as u64 * 7) % 40);
            let done = tokio::time::timeout(cut, store.set_props("f.opus", &xml(n))).await;
            let now = store.props("f.opus").await.unwrap().unwrap_or_default();
            assert!(now == last || now == xml(n), "after set {n} cut at {cut:?} ({done:?}): {:.80}", now);
            last = now;
        }
    });
}
