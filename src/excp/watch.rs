//! GIR mode: MCP posts its metadata to GIR, not to us, so a call becomes known when one of its
//! recordings appears in the WebDAV store (GIR names files `<CallUUID>_…`). Lists the store's
//! collection with PROPFIND at an interval; each new file touches its call, whose quiet period
//! then ends it and schedules the RWS fetch.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use http::Method;
use tokio_util::sync::CancellationToken;

use super::Excp;
use super::ingest::valid_call_uuid;
use crate::config::StoreWatch;
use crate::http::client::HttpClient;

/// A listing larger than this is refused (about 100,000 entries).
const MAX_LISTING: usize = 64 << 20;

pub async fn run(excp: Arc<Excp>, store: StoreWatch, shutdown: CancellationToken) {
    let Some(client) = excp.store_client.clone() else { return };
    let mut seen: HashSet<String> = HashSet::new();
    let auth = {
        use base64::Engine;
        let token =
            base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", store.username, store.password.expose()));
        format!("Basic {token}")
    };
    let url = format!("{}/", store.url);
    let mut interval = tokio::time::interval(store.poll_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let names = match list(&excp, &client, &url, &auth).await {
            Ok(names) => {
                if failing {
                    tracing::info!(store = %store.url, "recording store listing works again");
                    failing = false;
                }
                names
            }
            Err(why) => {
                if !failing {
                    tracing::warn!(store = %store.url, "cannot list the recording store: {why}");
                    failing = true;
                }
                continue;
            }
        };
        // Forget names that left the store (uploaded and deleted by exrp) to stay bounded.
        seen.retain(|n| names.contains(n));
        for name in names {
            if seen.contains(&name) {
                continue;
            }
            let Some(call_uuid) = call_of(&name) else {
                seen.insert(name);
                continue;
            };
            match excp.book.touch(call_uuid, &name).await {
                Ok(new) => {
                    if new {
                        tracing::info!(%call_uuid, file = %name, "call known from its recording in the store");
                    }
                    seen.insert(name);
                }
                // Not marked seen: tried again at the next listing.
                Err(err) => tracing::warn!(%call_uuid, file = %name, "cannot record the call: {err}"),
            }
        }
    }
}

/// GIR's file names start with the CallUUID: `011AP643CSAPR4FKQGQE31TAES00029V_2015-09-10_…`.
pub fn call_of(name: &str) -> Option<&str> {
    let (prefix, _) = name.split_once('_')?;
    valid_call_uuid(prefix).then_some(prefix)
}

async fn list(excp: &Excp, client: &HttpClient, url: &str, auth: &str) -> Result<HashSet<String>, String> {
    const BODY: &str =
        r#"<?xml version="1.0" encoding="utf-8"?><propfind xmlns="DAV:"><prop><resourcetype/></prop></propfind>"#;
    let method = Method::from_bytes(b"PROPFIND").map_err(|e| e.to_string())?;
    let reply = client
        .send(
            method,
            url,
            &[("authorization", auth), ("depth", "1"), ("content-type", "application/xml")],
            Bytes::from_static(BODY.as_bytes()),
            excp.config.request_timeout,
            MAX_LISTING,
        )
        .await
        .map_err(|e| e.to_string())?;
    if reply.status.as_u16() != 207 {
        return Err(format!("PROPFIND answered {}", reply.status));
    }
    file_names(&reply.body)
}

/// The file names (not collections) in a PROPFIND depth-1 multistatus, read as a stream of
/// events: a tree of the whole listing would cost a few KiB per file every `poll_interval`
/// (see `dav_client::parse_multistatus`). Names are matched without regard to namespaces.
pub fn file_names(xml: &[u8]) -> Result<HashSet<String>, String> {
    use xml::reader::XmlEvent;
    let mut r = xml::ParserConfig::new().create_reader(xml);
    let mut names = HashSet::new();
    // Local names of the open elements, the root first.
    let mut open: Vec<String> = Vec::new();
    // Of the response being read: the text of its first href (None: no text), whether one was
    // seen, whether its first prop's first resourcetype holds a collection.
    let (mut href, mut href_seen, mut in_href, mut collection) = (None::<String>, false, false, false);
    // Inside the current propstat: a prop was seen; inside that prop: a resourcetype was seen.
    let (mut prop_seen, mut resourcetype_seen) = (false, false);
    // The element at each depth is the first of its kind that counts (prop, resourcetype).
    let (mut in_first_prop, mut in_first_resourcetype) = (false, false);
    loop {
        match r.next().map_err(|e| format!("not a multistatus: {e}"))? {
            XmlEvent::StartElement { name, .. } => {
                let local = name.local_name;
                match (open.len(), local.as_str()) {
                    (1, "response") => {
                        (href, href_seen, collection) = (None, false, false);
                    }
                    (2, "href") if open[1] == "response" && !href_seen => {
                        (href_seen, in_href) = (true, true);
                    }
                    (2, "propstat") if open[1] == "response" => prop_seen = false,
                    (3, "prop") if open[2] == "propstat" && !prop_seen => {
                        (prop_seen, in_first_prop, resourcetype_seen) = (true, true, false);
                    }
                    (4, "resourcetype") if in_first_prop && !resourcetype_seen => {
                        (resourcetype_seen, in_first_resourcetype) = (true, true);
                    }
                    (5, "collection") if in_first_resourcetype => collection = true,
                    _ => {}
                }
                open.push(local);
            }
            XmlEvent::Characters(t) | XmlEvent::CData(t) if in_href && open.len() == 3 => {
                href.get_or_insert_with(String::new).push_str(&t);
            }
            XmlEvent::EndElement { .. } => {
                open.pop();
                match open.len() {
                    2 => in_href = false,
                    3 => in_first_prop = false,
                    4 => in_first_resourcetype = false,
                    _ => {}
                }
                if open.len() == 1
                    && let Some(href) = href.take()
                {
                    if collection || href.ends_with('/') {
                        continue;
                    }
                    let last = href.rsplit('/').next().unwrap_or_default();
                    let name = percent_encoding::percent_decode_str(last).decode_utf8_lossy().into_owned();
                    if !name.is_empty() {
                        names.insert(name);
                    }
                }
            }
            XmlEvent::EndDocument => return Ok(names),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_uuid_is_the_file_name_prefix() {
        assert_eq!(
            call_of("011AP643CSAPR4FKQGQE31TAES00029V_2015-09-10_16-58-22-006B015F-1000427D-00000001.opus"),
            Some("011AP643CSAPR4FKQGQE31TAES00029V")
        );
        assert_eq!(call_of("hello.opus"), None);
        assert_eq!(call_of("_x.opus"), None);
        assert_eq!(call_of("../x_y"), None);
    }

    #[test]
    fn multistatus_listing_skips_collections() {
        let xml = br#"<?xml version="1.0" encoding="utf-8"?>
<D:multistatus xmlns:D="DAV:">
 <D:response><D:href>/recordings/</D:href><D:propstat><D:prop><D:resourcetype><D:collection/></D:resourcetype></D:prop><D:status>HTTP/1.1 200 OK</D:status></D:propstat></D:response>
 <D:response><D:href>/recordings/CALL1_a%20b.opus</D:href><D:propstat><D:prop><D:resourcetype/></D:prop><D:status>HTTP/1.1 200 OK</D:status></D:propstat></D:response>
 <D:response><D:href>/recordings/sub</D:href><D:propstat><D:prop><D:resourcetype><D:collection/></D:resourcetype></D:prop></D:propstat></D:response>
</D:multistatus>"#;
        let names = file_names(xml).unwrap();
        assert_eq!(names.into_iter().collect::<Vec<_>>(), ["CALL1_a b.opus"]);
        assert!(file_names(b"not xml").is_err());
    }

    #[test]
    fn listing_reads_the_first_href_and_the_first_prop_as_a_tree_did() {
        // Apache's prefixes, a second href, a collection only in a second prop (not looked at)
        // or deeper than resourcetype, a response without href text, an href split by a comment.
        let xml = br#"<?xml version="1.0"?>
<D:multistatus xmlns:D="DAV:" xmlns:lp1="DAV:">
<D:response><D:href>/r/A_1.opus</D:href><D:href>/r/B_1.opus</D:href><D:propstat><D:prop><lp1:resourcetype/></D:prop><D:prop><lp1:resourcetype><D:collection/></lp1:resourcetype></D:prop></D:propstat></D:response>
<D:response><D:href>/r/C_1.<!-- c -->opus</D:href><D:propstat><D:prop><lp1:resourcetype><D:x><D:collection/></D:x></lp1:resourcetype></D:prop></D:propstat></D:response>
<D:response><D:href></D:href></D:response>
<D:response><D:href>/r/D_1.opus</D:href><D:propstat><D:prop><lp1:resourcetype><D:collection/></lp1:resourcetype></D:prop></D:propstat></D:response>
</D:multistatus>"#;
        let mut names = file_names(xml).unwrap().into_iter().collect::<Vec<_>>();
        names.sort();
        assert_eq!(names, ["A_1.opus", "C_1.opus"]);
    }
}
