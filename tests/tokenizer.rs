//! The `tokenizers` wrapper against ids produced by Python's `tokenizers` 0.23.3 for a tiny
//! byte-level BPE trained by `tools/golden/gen_common.py`.

use std::path::PathBuf;
use vlm4vla::models::common::tokenizer::Tokenizer;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/common")
}

fn manifest() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("manifest.json")).unwrap()).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<i64> {
    v.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect()
}

#[test]
fn encode_decode_match_python() {
    let m = manifest();
    let t = &m["tokenizer"];
    let tok = Tokenizer::from_file(fixtures().join(t["file"].as_str().unwrap())).unwrap();
    let cases = t["cases"].as_array().unwrap();
    assert!(cases.len() >= 4);
    for c in cases {
        let text = c["text"].as_str().unwrap();
        assert_eq!(tok.encode(text, false).unwrap(), ids(&c["ids"]), "{text:?} without special tokens");
        assert_eq!(tok.encode(text, true).unwrap(), ids(&c["ids_with_special"]), "{text:?} with special tokens");
        assert_eq!(tok.decode(&ids(&c["ids"]), false).unwrap(), c["decoded"].as_str().unwrap(), "{text:?}");
        assert_eq!(
            tok.decode(&ids(&c["ids_with_special"]), true).unwrap(),
            c["decoded_with_special_skipped"].as_str().unwrap(),
            "{text:?}"
        );
    }
    // BPE merges were learned: a word is fewer tokens than bytes.
    assert!(tok.encode("pick up the red block", false).unwrap().len() < "pick up the red block".len() / 2);
}

#[test]
fn token_lookups_match_python() {
    let m = manifest();
    let t = &m["tokenizer"];
    let tok = Tokenizer::from_file(fixtures().join("tokenizer.json")).unwrap();
    for (token, id) in t["token_to_id"].as_object().unwrap() {
        assert_eq!(tok.token_to_id(token), id.as_i64(), "{token:?}");
        if let Some(id) = id.as_i64() {
            assert_eq!(tok.id_to_token(id).as_deref(), Some(token.as_str()));
            assert_eq!(tok.require_id(token).unwrap(), id);
        }
    }
    let err = tok.require_id("missing-token").unwrap_err().to_string();
    assert!(err.contains("tokenizer.json") && err.contains("missing-token"), "{err}");
    assert!(tok.decode(&[-1], false).unwrap_err().to_string().contains("-1"));
    assert!(tok.vocab_size() > 256);
}

#[test]
fn missing_or_malformed_tokenizer_names_the_file() {
    let dir = std::env::temp_dir().join(format!("vlm4vla-tok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let missing = dir.join("nope.json");
    let err = Tokenizer::from_file(&missing).unwrap_err().to_string();
    assert!(err.contains("nope.json"), "{err}");
    let bad = dir.join("bad-tokenizer.json");
    std::fs::write(&bad, br#"{"model": {"type": "Nothing"}}"#).unwrap();
    let err = Tokenizer::from_file(&bad).unwrap_err().to_string();
    assert!(err.contains("bad-tokenizer.json") && err.contains("not a valid tokenizer.json"), "{err}");
    std::fs::write(&bad, b"{ truncated").unwrap();
    assert!(Tokenizer::from_file(&bad).unwrap_err().to_string().contains("bad-tokenizer.json"));
    std::fs::remove_dir_all(&dir).unwrap();
}
