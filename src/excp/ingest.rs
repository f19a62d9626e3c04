//! What MCP posts: the GIR recording shape (`id`, `mediaFiles[]`) or one media-file object,
//! turned into recordings keyed by (CallUUID, mediaId), every field kept as it came.

use serde_json::{Map, Value};

/// One recording file of a call, with the metadata exactly as it was posted.
#[derive(Debug, Clone, PartialEq)]
pub struct MediaFile {
    pub call_uuid: String,
    pub media_id: String,
    /// The media-file object as MCP sent it.
    pub metadata: Value,
    /// The enclosing recording object without `mediaFiles` (GIR shape), if any.
    pub call: Option<Value>,
}

/// Why a POST is refused, with the status code of the reply body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngestError {
    /// The documented answer to an empty POST or one without a usable CallUUID.
    #[error("CallUUID not found")]
    CallUuidNotFound,
    #[error("malformed JSON: {0}")]
    BadJson(String),
    #[error("invalid recording metadata: {0}")]
    Invalid(String),
}

impl IngestError {
    /// (HTTP status, body code).
    pub fn codes(&self) -> (u16, u32) {
        match self {
            IngestError::CallUuidNotFound => (404, 40402),
            IngestError::BadJson(_) => (400, 40000),
            IngestError::Invalid(_) => (400, 40001),
        }
    }
}

/// A CallUUID we accept: it names the call's state file, so it is short and plain
/// (GIR ids are 32 upper-case letters and digits).
pub fn valid_call_uuid(id: &str) -> bool {
    crate::durable::valid_key(id) && id.len() <= 64 && !id.contains('.')
}

/// Parses a POST body.
pub fn parse(body: &[u8]) -> Result<Vec<MediaFile>, IngestError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(IngestError::CallUuidNotFound);
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| IngestError::BadJson(e.to_string()))?;
    let Value::Object(top) = value else {
        return Err(IngestError::Invalid("the body must be a JSON object".into()));
    };
    match top.get("mediaFiles") {
        Some(Value::Array(files)) => gir_shape(&top, files),
        Some(_) => Err(IngestError::Invalid("mediaFiles must be a list".into())),
        None => single(top),
    }
}

fn string_field<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    obj.get(key).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty())
}

fn call_uuid_of(file: &Map<String, Value>, top: Option<&Map<String, Value>>) -> Result<String, IngestError> {
    let id = string_field(file, "callUUID")
        .or_else(|| top.and_then(|t| string_field(t, "callUUID")))
        .or_else(|| top.and_then(|t| string_field(t, "id")))
        .or_else(|| if top.is_none() { string_field(file, "id") } else { None });
    match id {
        Some(id) if valid_call_uuid(id) => Ok(id.to_string()),
        _ => Err(IngestError::CallUuidNotFound),
    }
}

/// `mediaId`, else the last path segment of `mediaUri` / `mediaPath`.
fn media_id_of(file: &Map<String, Value>) -> Result<String, IngestError> {
    let id = string_field(file, "mediaId").map(str::to_string).or_else(|| {
        ["mediaUri", "mediaPath"].iter().find_map(|k| {
            let uri = string_field(file, k)?;
            let path = uri.split(['?', '#']).next()?;
            path.rsplit('/').next().filter(|s| !s.is_empty()).map(str::to_string)
        })
    });
    let Some(id) = id else {
        return Err(IngestError::Invalid("a media file needs mediaId or mediaUri".into()));
    };
    if id.len() > 255 || id.chars().any(|c| c.is_control() || c == '/' || c == '\\') || id == "." || id == ".." {
        return Err(IngestError::Invalid(format!("mediaId {:?} is not a file name", truncate(&id))));
    }
    Ok(id)
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

fn gir_shape(top: &Map<String, Value>, files: &[Value]) -> Result<Vec<MediaFile>, IngestError> {
    if files.is_empty() {
        // A recording without files names a call but gives nothing to carry.
        call_uuid_of(&Map::new(), Some(top))?;
        return Err(IngestError::Invalid("mediaFiles is empty".into()));
    }
    let mut call = top.clone();
    call.remove("mediaFiles");
    let call = (!call.is_empty()).then_some(Value::Object(call));
    let mut out = Vec::with_capacity(files.len());
    for (i, file) in files.iter().enumerate() {
        let Value::Object(file) = file else {
            return Err(IngestError::Invalid(format!("mediaFiles[{i}] must be an object")));
        };
        out.push(MediaFile {
            call_uuid: call_uuid_of(file, Some(top))?,
            media_id: media_id_of(file)?,
            metadata: Value::Object(file.clone()),
            call: call.clone(),
        });
    }
    Ok(out)
}

fn single(file: Map<String, Value>) -> Result<Vec<MediaFile>, IngestError> {
    let call_uuid = call_uuid_of(&file, None)?;
    let media_id = media_id_of(&file)?;
    Ok(vec![MediaFile { call_uuid, media_id, metadata: Value::Object(file), call: None }])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn empty_and_callless_bodies_are_calluuid_not_found() {
        for body in [&b""[..], b"  \n", b"{}", br#"{"mediaId":"x.opus"}"#, br#"{"callUUID":"../etc"}"#] {
            assert_eq!(parse(body), Err(IngestError::CallUuidNotFound), "{:?}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn gir_shape_keeps_every_field_and_takes_the_call_from_id() {
        let body = json!({
            "id": "011AP643CSAPR4FKQGQE31TAES00029V",
            "callerPhoneNumber": "8522001",
            "mediaFiles": [
                {"mediaId": "a.opus", "type": "audio/opus", "duration": "12523", "parameters": {"agentId": "7"}},
                {"callUUID": "011AP643CSAPR4FKQGQE31TAES00029V", "mediaUri": "http://w/recordings/b.opus?x=1"}
            ]
        });
        let files = parse(body.to_string().as_bytes()).unwrap();
        assert_eq!(files.len(), 2);
        assert_eq!(files[0].call_uuid, "011AP643CSAPR4FKQGQE31TAES00029V");
        assert_eq!(files[0].media_id, "a.opus");
        assert_eq!(files[0].metadata["parameters"]["agentId"], "7");
        assert_eq!(files[1].media_id, "b.opus");
        assert_eq!(files[0].call.as_ref().unwrap()["callerPhoneNumber"], "8522001");
        assert!(files[0].call.as_ref().unwrap().get("mediaFiles").is_none());
    }

    #[test]
    fn a_single_media_file_object() {
        let body = json!({"callUUID": "CALL1", "mediaId": "CALL1_x.opus", "extra": [1, 2]});
        let files = parse(body.to_string().as_bytes()).unwrap();
        assert_eq!(
            files,
            vec![MediaFile { call_uuid: "CALL1".into(), media_id: "CALL1_x.opus".into(), metadata: body, call: None }]
        );
    }

    #[test]
    fn malformed_and_wrong_content_get_their_codes() {
        assert_eq!(parse(b"{not json").unwrap_err().codes(), (400, 40000));
        assert_eq!(parse(b"[1,2]").unwrap_err().codes(), (400, 40001));
        assert_eq!(parse(br#"{"id":"C","mediaFiles":{}}"#).unwrap_err().codes(), (400, 40001));
        assert_eq!(parse(br#"{"id":"C","mediaFiles":[]}"#).unwrap_err().codes(), (400, 40001));
        assert_eq!(parse(br#"{"id":"C","mediaFiles":[3]}"#).unwrap_err().codes(), (400, 40001));
        assert_eq!(parse(br#"{"callUUID":"C"}"#).unwrap_err().codes(), (400, 40001));
        assert_eq!(parse(br#"{"callUUID":"C","mediaId":"../x"}"#).unwrap_err().codes(), (400, 40001));
        let deep = "[".repeat(100_000);
        assert_eq!(parse(deep.as_bytes()).unwrap_err().codes(), (400, 40000));
    }
}
