//! Property tests: no input panics, every answer is well-formed.

use super::*;

// ---- fuzz: no input panics, every answer is well-formed --------------------

const METHODS: [&str; 12] = [
    "",
    "publish",
    "broadcast",
    "history",
    "history_remove",
    "presence",
    "presence_stats",
    "channels",
    "info",
    "disconnect",
    "unsubscribe",
    "batch",
];

const SEEDS: [&str; 12] = [
    r#"{"id":1,"method":"publish","params":{"channel":"a","data":1}}
{"id":2,"method":8,"params":{"pattern":"a*"}} {"method":"history","params":{"channel":"c","limit":3}}"#,
    r#"{"channel":"chat:1","data":{"a":[1,"x",null]},"tags":{"k":"v"},"skip_history":true}"#,
    r#"{"channels":["a","b",""],"data":"x","b64data":"aGk=","idempotency_key":"k"}"#,
    r#"{"channel":"c","limit":-1,"since":{"offset":3,"epoch":"e"},"reverse":true}"#,
    r#"{"channel":"c"}"#,
    r#"{"channel":"c"}"#,
    r#"{"channel":"c"}"#,
    r#"{"pattern":"{chat,news}:*[0-9]?"}"#,
    r#"{}"#,
    r#"{"user":"u","client":"c","whitelist":["x"],"disconnect":{"code":4000,"reason":"r"}}"#,
    r#"{"user":"u","channel":"c","client":"c1","session":""}"#,
    r#"{"commands":[{"publish":{"channel":"a","data":1}},{"history":{"channel":"c","limit":2}},{"channels":{"pattern":"*"}}],"parallel":false}"#,
];

/// A fake whose answers exercise every writer path.
fn rich_fake() -> Fake {
    Fake {
        positioned: true,
        history: Some(HistoryResult {
            publications: vec![publication(1, b"{\"x\":1}"), publication(2, b"\xffraw")],
            position: pos(2, "ep"),
        }),
        presence: vec![client("c1", "u", Some(b"{}"), Some(b"not json"))],
        channels: vec![("chat:1".into(), 1), ("news:22".into(), 2)],
        fail_channel: Some(("b", ErrorCode::NotAvailable)),
        ..Fake::default()
    }
}

/// Checks the invariants of an authorised call to a known method.
fn check_answer(method: &str, body: &[u8], transport: bool) -> Result<(), TestCaseError> {
    let mut e = rich_fake();
    let r = ApiRequest {
        method,
        api_key: Some(KEY),
        transport_errors: transport,
        body,
    };
    let resp = handle(&r, KEY, &mut e);
    match resp.status {
        400 if resp.content_type.starts_with("text/plain") => {
            // Transport-mode 400s carry JSON; decode 400s never call in.
            prop_assert!(e.calls.is_empty());
        }
        200 if method.is_empty() => {
            // Legacy: one reply object per line.
            prop_assert_eq!(resp.content_type, "application/json");
            let text = std::str::from_utf8(&resp.body)
                .map_err(|err| TestCaseError::fail(err.to_string()))?;
            for line in text.split('\n') {
                let v: Value = serde_json::from_str(line)
                    .map_err(|err| TestCaseError::fail(format!("{err}: {line}")))?;
                let obj = v
                    .as_object()
                    .ok_or_else(|| TestCaseError::fail("not an object"))?;
                prop_assert!(obj.contains_key("result") != obj.contains_key("error"));
                prop_assert!(obj.len() <= 2);
            }
        }
        200 | 400 | 404 | 416 | 500 => {
            prop_assert_eq!(resp.content_type, "application/json");
            let v: Value = serde_json::from_slice(&resp.body)
                .map_err(|err| TestCaseError::fail(format!("{err}: {:?}", resp.body)))?;
            let obj = v
                .as_object()
                .ok_or_else(|| TestCaseError::fail("not an object"))?;
            if resp.status != 200 {
                prop_assert!(transport);
                prop_assert!(obj.contains_key("code") && obj.contains_key("message"));
            } else if method == "batch" {
                prop_assert!(obj.len() == 1 && obj["replies"].is_array());
            } else {
                prop_assert_eq!(obj.len(), 1);
                prop_assert!(obj.contains_key("result") || obj.contains_key("error"));
            }
        }
        other => prop_assert!(false, "status {other}"),
    }
    Ok(())
}

#[derive(Debug, Clone)]
enum Edit {
    Flip(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Truncate(usize),
}

fn edit_strategy() -> impl Strategy<Value = Edit> {
    let byte = prop_oneof![
        prop::sample::select(b"{}[]\":,-0123456789.eEtrufalsn\\ ".to_vec()),
        any::<u8>(),
    ];
    prop_oneof![
        (any::<usize>(), byte.clone()).prop_map(|(i, b)| Edit::Flip(i, b)),
        (any::<usize>(), byte).prop_map(|(i, b)| Edit::Insert(i, b)),
        any::<usize>().prop_map(Edit::Delete),
        any::<usize>().prop_map(Edit::Truncate),
    ]
}

fn apply(seed: &str, edits: &[Edit]) -> Vec<u8> {
    let mut b = seed.as_bytes().to_vec();
    for edit in edits {
        let n = b.len();
        match *edit {
            Edit::Flip(i, x) if n > 0 => b[i % n] = x,
            Edit::Insert(i, x) => b.insert(i % (n + 1), x),
            Edit::Delete(i) if n > 0 => {
                b.remove(i % n);
            }
            Edit::Truncate(i) => b.truncate(i % (n + 1)),
            _ => {}
        }
    }
    b
}

/// Arbitrary JSON values, to put type confusion into known fields.
fn json_strategy() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "[a-z:#*?{},\\[\\]\\\\=+/]{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("channel".to_string()),
                    Just("data".to_string()),
                    Just("offset".to_string()),
                    Just("epoch".to_string()),
                    Just("code".to_string()),
                    Just("publish".to_string()),
                    "[a-z_]{1,8}".prop_map(String::from),
                ],
                inner,
                0..4
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

const FIELDS: [&str; 22] = [
    "channel",
    "channels",
    "data",
    "b64data",
    "skip_history",
    "tags",
    "idempotency_key",
    "delta",
    "limit",
    "since",
    "reverse",
    "pattern",
    "user",
    "client",
    "session",
    "whitelist",
    "disconnect",
    "commands",
    "parallel",
    "publish",
    "history",
    "info",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn mutated_bodies_never_panic(
        which in 0..METHODS.len(),
        seed in 0..SEEDS.len(),
        edits in prop::collection::vec(edit_strategy(), 0..6),
        transport in any::<bool>(),
    ) {
        let body = apply(SEEDS[seed], &edits);
        check_answer(METHODS[which], &body, transport)?;
    }

    #[test]
    fn random_bytes_never_panic(which in 0..METHODS.len(), body in prop::collection::vec(any::<u8>(), 0..64)) {
        check_answer(METHODS[which], &body, false)?;
    }

    #[test]
    fn typed_fields_with_any_values_never_panic(
        which in 0..METHODS.len(),
        fields in prop::collection::btree_map(0..FIELDS.len(), json_strategy(), 0..5),
        transport in any::<bool>(),
    ) {
        let obj: serde_json::Map<String, Value> =
            fields.into_iter().map(|(i, v)| (FIELDS[i].to_string(), v)).collect();
        let body = Value::Object(obj).to_string();
        check_answer(METHODS[which], body.as_bytes(), transport)?;
        // The same values wrapped as one batch command of each method.
        let batch = json!({"commands": [{ METHODS[which]: serde_json::from_str::<Value>(&body).unwrap_or(Value::Null) }]});
        check_answer("batch", batch.to_string().as_bytes(), false)?;
    }
}
