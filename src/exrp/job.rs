//! The interaction-end body (DESIGN.md §2) read into one job per recording. The store name of
//! a recording is its `mediaId`, else the last path segment of its `uri` (when the mediaId is
//! absent): never a host from the body. In GIR mode `uri` is RWS's play URL, not a store path.

use serde_json::{Map, Value, json};

use super::queue::{NewJob, now_ms};

/// Limits on what one interaction-end may hold.
const MAX_RECORDINGS: usize = 10_000;
const MAX_ID: usize = 256;

/// Why a body is refused (400), said so the sender can fix it.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the body is not JSON: {0}")]
    Json(String),
    #[error("{0}")]
    Shape(String),
}

fn text<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    obj.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

fn check_id(what: &str, value: &str) -> Result<(), BodyError> {
    if value.len() > MAX_ID || value.chars().any(char::is_control) {
        return Err(BodyError::Shape(format!("{what} must be at most {MAX_ID} printable characters")));
    }
    Ok(())
}

/// A name that addresses one file directly in the store's collection.
pub fn valid_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', '\0'])
        && !name.chars().any(char::is_control)
}

/// The store name: the mediaId when there is one, else the last path segment of `uri`
/// (percent-decoded).
pub fn file_name(uri: Option<&str>, media_id: Option<&str>) -> Option<String> {
    let name = match media_id {
        Some(id) => id.to_string(),
        None => {
            let u = uri?;
            let path = u.split(['?', '#']).next().unwrap_or(u);
            let segment = path.rsplit('/').next()?;
            percent_encoding::percent_decode_str(segment).decode_utf8().ok()?.into_owned()
        }
    };
    valid_file_name(&name).then_some(name)
}

/// Reads an interaction-end into jobs, or says what is wrong with it.
pub fn parse(body: &[u8], default_tenant: &str) -> Result<Vec<NewJob>, BodyError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| BodyError::Json(e.to_string()))?;
    let Value::Object(call) = value else {
        return Err(BodyError::Shape("the body must be a JSON object".into()));
    };
    let call_uuid =
        text(&call, "callUUID").ok_or_else(|| BodyError::Shape("callUUID is missing or not a string".into()))?;
    check_id("callUUID", call_uuid)?;
    let tenant = match call.get("tenant") {
        None | Some(Value::Null) => default_tenant,
        Some(Value::String(t)) if !t.is_empty() => t.as_str(),
        Some(_) => return Err(BodyError::Shape("tenant must be a non-empty string".into())),
    };
    check_id("tenant", tenant)?;
    let recordings = match call.get("recordings") {
        Some(Value::Array(r)) if !r.is_empty() => r,
        Some(Value::Array(_)) => return Err(BodyError::Shape("recordings is empty".into())),
        _ => return Err(BodyError::Shape("recordings is missing or not an array".into())),
    };
    if recordings.len() > MAX_RECORDINGS {
        return Err(BodyError::Shape(format!("more than {MAX_RECORDINGS} recordings in one interaction-end")));
    }
    // The call's own fields travel with each recording (not its recordings array).
    let mut call_fields = call.clone();
    call_fields.remove("recordings");
    let now = now_ms();
    let mut jobs = Vec::with_capacity(recordings.len());
    let mut names = std::collections::HashSet::new();
    for (i, rec) in recordings.iter().enumerate() {
        let Value::Object(rec) = rec else {
            return Err(BodyError::Shape(format!("recordings[{i}] is not an object")));
        };
        let uri = match rec.get("uri") {
            None | Some(Value::Null) => None,
            Some(Value::String(u)) => Some(u.as_str()),
            Some(_) => return Err(BodyError::Shape(format!("recordings[{i}].uri is not a string"))),
        };
        let given = text(rec, "mediaId");
        let file = file_name(uri, given).ok_or_else(|| {
            BodyError::Shape(match given {
                Some(_) => {
                    format!("recordings[{i}].mediaId must be the recording's file name in the store (one path segment)")
                }
                None => format!("recordings[{i}] has neither mediaId nor a uri whose last segment names a file"),
            })
        })?;
        let media_id = given.map_or_else(|| file.clone(), str::to_string);
        check_id(&format!("recordings[{i}].mediaId"), &media_id)?;
        match rec.get("size") {
            None | Some(Value::Null) => {}
            Some(v) if v.as_u64().is_some() => {}
            Some(_) => return Err(BodyError::Shape(format!("recordings[{i}].size is not a whole number"))),
        }
        if !names.insert(media_id.clone()) {
            // The same recording twice in one body is one job.
            continue;
        }
        let spec = json!({
            "callUUID": call_uuid,
            "mediaId": media_id,
            "file": file,
            "tenant": tenant,
            "call": call_fields,
            "recording": rec,
        });
        jobs.push(NewJob {
            call_uuid: call_uuid.to_string(),
            media_id,
            file,
            tenant: tenant.to_string(),
            spec: spec.to_string(),
            accepted_at_ms: now,
        });
    }
    Ok(jobs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_media_id_else_the_uri_path_never_its_host() {
        // RWS's play URL names an .mp3 on RWS: the mediaId is the store's name.
        let play = "http://rws.example/api/v2/recordings/C1/play/5f0c6a1e-aaaa.mp3";
        assert_eq!(
            file_name(Some(play), Some("C1_2015-09-10_16-58-22.opus")).as_deref(),
            Some("C1_2015-09-10_16-58-22.opus")
        );
        assert_eq!(file_name(Some("http://evil.example/x/a%20b.opus?q=1"), None).as_deref(), Some("a b.opus"));
        assert_eq!(file_name(None, Some("m1.opus")).as_deref(), Some("m1.opus"));
        assert_eq!(file_name(Some("http://h/recordings/"), None), None);
        assert_eq!(file_name(Some("http://h/..%2Fetc"), None), None);
        assert_eq!(file_name(Some("http://h/%2E%2E"), None), None);
        assert_eq!(file_name(None, Some("../x")), None);
        assert_eq!(file_name(Some("http://h/ok.opus"), Some("a/b")), None, "a bad mediaId is not replaced by the uri");
    }

    #[test]
    fn bodies_are_checked() {
        let ok = br#"{"callUUID":"C1","tenant":"T","recordings":[{"mediaId":"C1_m1.opus","uri":"http://rws/play/x.mp3","size":10},{"mediaId":"C1_m1.opus"},{"uri":"http://w/recordings/C1_m2.opus"}]}"#;
        let jobs = parse(ok, "Environment").unwrap();
        assert_eq!(jobs.len(), 2);
        assert_eq!((jobs[0].file.as_str(), jobs[0].media_id.as_str()), ("C1_m1.opus", "C1_m1.opus"));
        assert_eq!((jobs[1].file.as_str(), jobs[1].media_id.as_str()), ("C1_m2.opus", "C1_m2.opus"));
        assert_eq!(jobs[0].tenant, "T");
        for (body, needle) in [
            (&b"{"[..], "not JSON"),
            (b"[]", "JSON object"),
            (br#"{"recordings":[]}"#, "callUUID"),
            (br#"{"callUUID":"C","recordings":[]}"#, "empty"),
            (br#"{"callUUID":"C","recordings":[1]}"#, "not an object"),
            (br#"{"callUUID":"C","recordings":[{"uri":"http://h/"}]}"#, "neither mediaId"),
            (br#"{"callUUID":"C","recordings":[{"mediaId":"../x","uri":"http://h/x"}]}"#, "file name in the store"),
            (br#"{"callUUID":"C","recordings":[{"mediaId":"a","size":"x"}]}"#, "size"),
            (br#"{"callUUID":"C","tenant":5,"recordings":[{"mediaId":"a"}]}"#, "tenant"),
        ] {
            let err = parse(body, "E").unwrap_err().to_string();
            assert!(err.contains(needle), "{err} should mention {needle}");
        }
    }
}
