//! Payload contracts end to end: every message a run collected upstream is
//! checked against the JSON Schema its topic implies (`docs/schemas/`,
//! described in docs/payloads.md). Called at the end of other scenarios on
//! what they collected; it runs no gateway of its own.

use std::collections::HashMap;
use std::path::Path;

use sensor_gateway::model::payload::SCHEMA;
use sensor_gateway_e2e::{repo_root, Subscriber};
use serde_json::Value;

/// Compiled schemas by file name (`summary.v1.json`).
#[derive(Default)]
struct Schemas(HashMap<String, jsonschema::Validator>);

impl Schemas {
    fn check(&mut self, file: &str, topic: &str, payload: &Value) {
        let validator = self.0.entry(file.to_owned()).or_insert_with(|| {
            let path = repo_root().join("docs/schemas").join(file);
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let schema: Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            jsonschema::draft202012::new(&schema)
                .unwrap_or_else(|e| panic!("{}: {e}", Path::new(file).display()))
        });
        let errors: Vec<String> = validator
            .iter_errors(payload)
            .map(|e| format!("at {}: {e}", e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "the message on {topic} does not match docs/schemas/{file}:\n  {}\npayload: {payload}",
            errors.join("\n  ")
        );
    }
}

/// The schema file a record on `topic` must match, by the default topic
/// templates: `gateways/{gateway}/summary|value|alarm/{sensor}`; the alarm
/// topic carries alarm and anomaly events, told apart by `kind`. `None` for
/// the command topic: what is there is the test's own input to the gateway,
/// some of it malformed on purpose (the command schema is checked against
/// the gateway's parser in `gateway/tests/payload_schemas.rs`).
fn schema_of(topic: &str, payload: &Value) -> Option<String> {
    let kind = match topic.split('/').nth(2) {
        Some("command") => return None,
        Some("summary") => "summary",
        Some("value") => "value",
        Some("alarm") => match payload["kind"].as_str() {
            Some(k @ ("alarm" | "anomaly")) => k,
            other => panic!("{other:?} on the alarm topic {topic}: {payload}"),
        },
        _ => panic!("no schema for the topic {topic}: {payload}"),
    };
    Some(format!("{kind}.v{SCHEMA}.json"))
}

/// Checks every message the gateway published that `sub` collected (started
/// with `start_keeping_topics`), status messages included; returns how many
/// records of each kind were checked, for the caller to assert coverage.
pub fn check_upstream(sub: &Subscriber) -> HashMap<String, usize> {
    let mut schemas = Schemas::default();
    let mut checked: HashMap<String, usize> = HashMap::new();
    for (topic, payload) in sub.with_topics() {
        let Some(file) = schema_of(&topic, &payload) else {
            continue;
        };
        schemas.check(&file, &topic, &payload);
        let kind = payload["kind"].as_str().unwrap_or_default().to_owned();
        *checked.entry(kind).or_default() += 1;
    }
    for (payload, _retained) in sub.status_snapshot() {
        schemas.check("status.v1.json", "the status topic", &payload);
        *checked.entry("status".into()).or_default() += 1;
    }
    checked
}
