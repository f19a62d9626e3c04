//! GIR mode: which file in the store each media file of an RWS answer is. RWS names a media
//! file by its own `mediaId` (often `…​.mp3`) and a play URL on RWS, neither of which is the
//! recording MCP put into the store; the store watch knows the call's files by name. Each media
//! file is paired with one of them (same name, same name but the extension, else in time
//! order when the counts agree); a store file nothing names is sent too, with the call's data,
//! so no recording of a known call is left behind.

use serde_json::{Value, json};

use super::ingest::MediaFile;

/// What a pairing did, for the log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Paired {
    /// Media files matched by name or stem.
    pub by_name: usize,
    /// Media files matched by order (start time against file name).
    pub by_order: usize,
    /// Media files left with RWS's mediaId (no store file for them).
    pub unmatched: usize,
    /// Store files no media file names, sent on their own.
    pub store_only: usize,
}

fn stem(name: &str) -> &str {
    name.rsplit_once('.').map_or(name, |(s, _)| s)
}

/// Renames each media file to its file in the store (`store`: the call's files as the store
/// watch saw them). The RWS answer stays in the metadata as it came.
pub fn pair(files: Vec<MediaFile>, store: &[String]) -> (Vec<MediaFile>, Paired) {
    let mut paired = Paired::default();
    let mut taken = vec![false; store.len()];
    let mut names: Vec<Option<String>> = vec![None; files.len()];
    for (i, f) in files.iter().enumerate() {
        let found = store
            .iter()
            .enumerate()
            .find(|(j, s)| !taken[*j] && **s == f.media_id)
            .or_else(|| store.iter().enumerate().find(|(j, s)| !taken[*j] && stem(s) == stem(&f.media_id)));
        if let Some((j, s)) = found {
            taken[j] = true;
            names[i] = Some(s.clone());
            paired.by_name += 1;
        }
    }
    let mut left_files: Vec<usize> = (0..files.len()).filter(|i| names[*i].is_none()).collect();
    let mut left_store: Vec<usize> = (0..store.len()).filter(|j| !taken[*j]).collect();
    if !left_files.is_empty() && left_files.len() == left_store.len() {
        // GIR names files `<CallUUID>_<date>_<time>-…`: by name is by time.
        left_files.sort_by_key(|i| start_time(&files[*i].metadata));
        left_store.sort_by_key(|j| store[*j].clone());
        for (i, j) in left_files.drain(..).zip(left_store.drain(..)) {
            names[i] = Some(store[j].clone());
            paired.by_order += 1;
        }
    }
    paired.unmatched = left_files.len();
    paired.store_only = left_store.len();
    let call = files.first().and_then(|f| f.call.clone());
    let call_uuid = files.first().map(|f| f.call_uuid.clone()).unwrap_or_default();
    let mut out: Vec<MediaFile> = files
        .into_iter()
        .zip(names)
        .map(|(mut f, name)| {
            if let Some(name) = name {
                f.media_id = name;
            }
            f
        })
        .collect();
    for j in left_store {
        out.push(MediaFile {
            call_uuid: call_uuid.clone(),
            media_id: store[j].clone(),
            metadata: json!({ "callUUID": call_uuid, "mediaId": store[j], "note": "in the store; RWS named no media file for it" }),
            call: call.clone(),
        });
    }
    (out, paired)
}

/// `startTime` as a sortable key: RWS writes `2015-09-10T16:58:22.000+0000`; the text sorts
/// in time order within one offset, which is all one call's files have.
fn start_time(metadata: &Value) -> String {
    metadata.get("startTime").and_then(Value::as_str).unwrap_or_default().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rws(media_id: &str, start: &str) -> MediaFile {
        MediaFile {
            call_uuid: "C1".into(),
            media_id: media_id.into(),
            metadata: json!({
                "mediaId": media_id,
                "mediaUri": format!("http://rws/api/v2/recordings/C1/play/{media_id}"),
                "startTime": start,
            }),
            call: Some(json!({ "id": "C1" })),
        }
    }

    fn ids(files: &[MediaFile]) -> Vec<&str> {
        files.iter().map(|f| f.media_id.as_str()).collect()
    }

    #[test]
    fn same_name_then_same_stem() {
        let store = vec!["C1_2015-09-10_16-58-22-01.opus".to_string(), "C1_x.opus".to_string()];
        let (out, p) = pair(vec![rws("C1_2015-09-10_16-58-22-01.mp3", "a"), rws("C1_x.opus", "b")], &store);
        assert_eq!(ids(&out), ["C1_2015-09-10_16-58-22-01.opus", "C1_x.opus"]);
        assert_eq!(p, Paired { by_name: 2, ..Paired::default() });
        // RWS's answer is kept as it came.
        assert_eq!(out[0].metadata["mediaId"], "C1_2015-09-10_16-58-22-01.mp3");
    }

    #[test]
    fn unrelated_uuids_pair_in_time_order_when_the_counts_agree() {
        let store = vec!["C1_2015-09-10_17-00-00.opus".to_string(), "C1_2015-09-10_16-58-22.opus".to_string()];
        let files =
            vec![rws("9f1c-b.mp3", "2015-09-10T17:00:00.000+0000"), rws("0a2d-a.mp3", "2015-09-10T16:58:22.000+0000")];
        let (out, p) = pair(files, &store);
        assert_eq!(ids(&out), ["C1_2015-09-10_17-00-00.opus", "C1_2015-09-10_16-58-22.opus"]);
        assert_eq!(p.by_order, 2);
    }

    #[test]
    fn leftovers_on_either_side_are_kept_never_guessed() {
        let store = vec!["C1_a.opus".to_string(), "C1_b.opus".to_string(), "C1_c.opus".to_string()];
        let (out, p) = pair(vec![rws("C1_a.mp3", "1"), rws("zz.mp3", "2")], &store);
        // zz.mp3 cannot be told from b or c: it keeps its name; b and c go on their own.
        assert_eq!(ids(&out), ["C1_a.opus", "zz.mp3", "C1_b.opus", "C1_c.opus"]);
        assert_eq!(p, Paired { by_name: 1, by_order: 0, unmatched: 1, store_only: 2 });
        assert_eq!(out[2].call, Some(json!({ "id": "C1" })));
        // Without a store watch nothing changes.
        let (out, p) = pair(vec![rws("C1_a.mp3", "1")], &[]);
        assert_eq!(ids(&out), ["C1_a.mp3"]);
        assert_eq!(p.unmatched, 1);
    }
}
