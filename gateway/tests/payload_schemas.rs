//! Payload contracts (docs/payloads.md): every payload the processing core
//! and the status topic produce validates against its JSON Schema in
//! `docs/schemas/`, declares no field the schema does not, and leaves no
//! field of the schema unused; the fixtures of every schema version stay
//! valid; and a released schema only changes compatibly (otherwise: bump
//! the schema version).
//!
//! Payloads come from the real core, built from a configuration as the
//! runtime builds it, driven through every alarm type and transition, every
//! anomaly detector and feature, and every value reason.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{json, Value};

use sensor_gateway::config::Config;
use sensor_gateway::metrics::Metrics;
use sensor_gateway::model::payload::SCHEMA;
use sensor_gateway::model::Record;
use sensor_gateway::processor::{parse_command, CoreSettings, Processor, RawMessage};
use sensor_gateway::upstream::StatusIdentity;

const T0: i64 = 1_700_000_000_000;
const S: i64 = 1000;

/// Every record kind of the core, with the upstream topic level its default
/// topic template gives it.
const RECORD_KINDS: [(&str, &str); 4] = [
    ("summary", "summary"),
    ("alarm", "alarm"),
    ("anomaly", "alarm"),
    ("value", "value"),
];

/// A sensor with every alarm type and statistic, one with anomaly
/// detection, one `on_change`, one `raw`.
const CONFIG: &str = include_str!("data/payload-scenario.toml");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `docs/schemas/<kind>.v<version>.json`.
fn schema_path(kind: &str, version: u32) -> PathBuf {
    repo().join(format!("docs/schemas/{kind}.v{version}.json"))
}

/// The schema itself must be valid draft 2020-12.
fn schema(kind: &str, version: u32) -> Value {
    let path = schema_path(kind, version);
    let s = read_json(&path);
    if let Err(e) = jsonschema::meta::validate(&s) {
        panic!("{} is not a valid JSON Schema: {e}", path.display());
    }
    s
}

/// `schema` with `additionalProperties: false` at the top: a payload field
/// the schema does not declare fails.
fn strict(mut schema: Value) -> Value {
    schema["additionalProperties"] = json!(false);
    schema
}

/// Every way `payload` fails `schema`, one line each (none: valid).
fn violations(schema: &Value, payload: &Value) -> Vec<String> {
    let validator = jsonschema::draft202012::new(schema).expect("a compilable schema");
    validator
        .iter_errors(payload)
        .map(|e| format!("at {}: {e}", e.instance_path()))
        .collect()
}

fn check_valid(schema: &Value, payload: &Value, what: &str) {
    let errors = violations(schema, payload);
    assert!(
        errors.is_empty(),
        "{what} does not match {}:\n  {}\npayload: {payload}",
        schema["$id"],
        errors.join("\n  ")
    );
}

/// The core of `CONFIG`, fed readings in event-time order; `now` is the
/// event time (the gateway clock is trusted and in step).
struct Core {
    p: Processor,
    out: Vec<Record>,
    now: i64,
}

impl Core {
    fn new() -> Self {
        let config = Config::parse(CONFIG, Path::new("schemas.toml")).expect("a valid config");
        let p = Processor::new(
            CoreSettings::from_config(&config),
            Arc::new(Metrics::new()),
            1,
        );
        Core {
            p,
            out: Vec::new(),
            now: T0,
        }
    }

    /// A reading of `sensor` (`line/machine/name`) at `ts`.
    fn reading(&mut self, sensor: &str, value: f64, ts: i64) {
        self.advance(ts);
        let msg = RawMessage {
            source: 0,
            topic: format!("plant/{sensor}"),
            payload: format!(r#"{{"value":{value},"ts":{ts}}}"#).into(),
            received_ms: ts,
        };
        self.p.ingest(&msg, ts, &mut self.out);
    }

    /// `readings` readings of `value`, 100 ms apart, from 100 ms on.
    fn hold(&mut self, sensor: &str, value: f64, readings: usize) {
        for _ in 0..readings {
            self.reading(sensor, value, self.now + 100);
        }
    }

    /// Gateway time passes to `now`: windows close for silence, stale
    /// alarms and heartbeats fire.
    fn advance(&mut self, now: i64) {
        self.now = self.now.max(now);
        self.p.flush_due(self.now, &mut self.out);
    }

    /// Acknowledges the latest occurrence of `alarm_id` by `by`.
    fn ack(&mut self, alarm_id: &str, by: &str) {
        let occurrence = self
            .payloads()
            .iter()
            .rev()
            .find(|(_, v)| v["alarm_id"] == alarm_id && v["event"] == "raised")
            .and_then(|(_, v)| v["occurrence"].as_u64())
            .unwrap_or_else(|| panic!("{alarm_id} was never raised"));
        let text =
            json!({"command": "ack", "alarm_id": alarm_id, "occurrence": occurrence, "by": by});
        let cmd = parse_command(text.to_string().as_bytes(), false).expect("a valid command");
        self.p
            .command(&cmd, self.now, &mut self.out)
            .unwrap_or_else(|e| panic!("ack of {alarm_id}: {e}"));
    }

    fn payloads(&self) -> Vec<(String, Value)> {
        self.out
            .iter()
            .map(|r| {
                let v = serde_json::from_slice(&r.payload).expect("a JSON payload");
                (r.topic.clone(), v)
            })
            .collect()
    }
}

/// A temperature sensor through every alarm type: raised, acknowledged,
/// cleared.
fn drive_alarms(c: &mut Core) {
    let temp = "l1/m1/temp";
    c.hold(temp, 20.0, 25);
    c.hold(temp, 60.0, 3); // high, and a rate of 2,400 degC/min
    c.hold(temp, 90.0, 3); // high_high
    c.ack("l1/m1/temp:high", "j.doe");
    c.hold(temp, 90.0, 25); // the rate falls to 0: rate_of_change clears
    c.hold(temp, 20.0, 25); // high and high_high clear
    c.hold(temp, -10.0, 3); // low
    c.hold(temp, -30.0, 3); // low_low
    c.hold(temp, 20.0, 25); // both clear
    c.advance(c.now + 10 * S); // silence: stale
    c.hold(temp, 20.0, 3); // stale clears
}

/// A vibration sensor that learns its baseline, steps up, comes back, steps
/// down and comes back: both detectors on both features, up and down,
/// raised and cleared.
fn drive_anomalies(c: &mut Core) {
    let windows = |c: &mut Core, level: f64, n: usize| {
        for _ in 0..n * 10 {
            let wobble = 0.05 * ((c.now / 100) as f64 * 0.7).sin();
            c.hold("l1/m2/vibration", level + wobble, 1);
        }
    };
    windows(c, 1.0, 8);
    windows(c, 3.0, 10);
    windows(c, 1.0, 120);
    windows(c, 0.2, 10);
    windows(c, 1.0, 120);
}

/// `on_change` (change, then a heartbeat after silence) and `raw`.
fn drive_values(c: &mut Core) {
    c.hold("t1/t1/level", 10.0, 1);
    c.hold("t1/t1/level", 10.2, 1);
    c.hold("t1/t1/level", 11.0, 1);
    c.advance(c.now + 15 * S);
    c.hold("d1/d1/door", 1.0, 1);
    c.hold("d1/d1/door", 0.0, 1);
}

/// Every record the scenario makes, as (topic, payload).
fn core_payloads() -> Vec<(String, Value)> {
    let mut c = Core::new();
    drive_alarms(&mut c);
    drive_anomalies(&mut c);
    drive_values(&mut c);
    c.p.flush_all(&mut c.out);
    c.payloads()
}

/// What distinguishes the variants of a payload: kind, event, alarm type,
/// detector, feature, value reason.
fn variant(v: &Value) -> String {
    let s = |k: &str| v[k].as_str().unwrap_or("").to_owned();
    match s("kind").as_str() {
        "alarm" => format!("alarm:{}:{}", s("type"), s("event")),
        "anomaly" => format!("anomaly:{}:{}:{}", s("detector"), s("feature"), s("event")),
        "value" => format!("value:{}", s("reason")),
        k => k.to_owned(),
    }
}

#[test]
fn the_scenario_produces_every_kind_and_variant() {
    let payloads = core_payloads();
    let seen: BTreeSet<String> = payloads.iter().map(|(_, v)| variant(v)).collect();
    let mut wanted = vec!["summary".to_owned()];
    for ty in [
        "low_low",
        "low",
        "high",
        "high_high",
        "rate_of_change",
        "stale",
    ] {
        for ev in ["raised", "cleared"] {
            wanted.push(format!("alarm:{ty}:{ev}"));
        }
    }
    wanted.push("alarm:high:acknowledged".into());
    for det in ["ewma_z", "cusum"] {
        for feature in ["mean", "rms"] {
            for ev in ["raised", "cleared"] {
                wanted.push(format!("anomaly:{det}:{feature}:{ev}"));
            }
        }
    }
    for reason in ["change", "heartbeat", "raw"] {
        wanted.push(format!("value:{reason}"));
    }
    let missing: Vec<_> = wanted.iter().filter(|w| !seen.contains(*w)).collect();
    assert!(
        missing.is_empty(),
        "not produced: {missing:?}; seen: {seen:?}"
    );
    let directions: BTreeSet<String> = payloads
        .iter()
        .filter_map(|(_, v)| v["direction"].as_str().map(String::from))
        .collect();
    assert_eq!(directions, BTreeSet::from(["down".into(), "up".into()]));
}

#[test]
fn every_payload_of_the_core_matches_the_schema_of_its_kind_and_topic() {
    let schemas: BTreeMap<&str, Value> = RECORD_KINDS
        .iter()
        .map(|&(kind, _)| (kind, strict(schema(kind, SCHEMA))))
        .collect();
    for (topic, payload) in core_payloads() {
        let kind = payload["kind"].as_str().unwrap_or("(none)");
        let Some(&(_, level)) = RECORD_KINDS.iter().find(|(k, _)| *k == kind) else {
            panic!("unknown kind {kind} on {topic}: {payload}");
        };
        assert_eq!(
            topic.split('/').nth(2),
            Some(level),
            "the {kind} on the topic {topic}"
        );
        check_valid(&schemas[kind], &payload, &format!("the {kind} on {topic}"));
    }
}

/// The schemas declare no field the gateway never writes: each declared
/// property appears in some payload of the scenario (which fills every
/// optional field).
#[test]
fn every_field_a_schema_declares_is_written_by_the_core() {
    let payloads = core_payloads();
    for (kind, _) in RECORD_KINDS {
        let written: BTreeSet<&str> = payloads
            .iter()
            .filter(|(_, v)| v["kind"] == kind)
            .filter_map(|(_, v)| v.as_object())
            .flat_map(|o| o.keys().map(String::as_str))
            .collect();
        let s = schema(kind, SCHEMA);
        let declared = s["properties"].as_object().expect("properties");
        let unused: Vec<_> = declared
            .keys()
            .filter(|k| !written.contains(k.as_str()))
            .collect();
        assert!(
            unused.is_empty(),
            "{kind}.v{SCHEMA}.json declares fields no payload carries: {unused:?}"
        );
    }
}

/// The header is the same in every record schema: one layout, four files.
#[test]
fn every_record_schema_declares_the_same_header() {
    let header = ["schema", "gateway", "seq", "sensor", "labels", "unit"];
    let first = schema("summary", SCHEMA);
    for (kind, _) in RECORD_KINDS {
        let s = schema(kind, SCHEMA);
        for field in header {
            assert_eq!(
                s["properties"][field], first["properties"][field],
                "{kind}.v{SCHEMA}.json: `{field}` differs from summary.v{SCHEMA}.json"
            );
        }
        assert_eq!(s["properties"]["kind"]["const"], kind);
        assert_eq!(s["properties"]["schema"]["const"], SCHEMA);
    }
}

fn status_payloads() -> Vec<(&'static str, Value)> {
    let identity = StatusIdentity {
        topic: "gateways/gw-schemas/status".into(),
        gateway: "gw-schemas".into(),
        version: env!("CARGO_PKG_VERSION"),
        started_at: "2026-11-26T10:00:00Z".into(),
        started_ms: T0,
    };
    let metrics = Metrics::new();
    metrics.set_config_sha256(&"ab".repeat(32));
    metrics.mqtt_source("plant").set(1);
    let _ = metrics.serial_port("line1");
    metrics.upstream_queue_records.set(3);
    metrics.upstream_queue_bytes.set(900);
    let parse = |b: &[u8]| serde_json::from_slice::<Value>(b).expect("a JSON status");
    vec![
        ("birth", parse(&identity.online(&metrics, T0 + 61 * S))),
        (
            "clean offline",
            parse(&identity.offline(true, &metrics, Some(T0 + 90 * S))),
        ),
        ("last will", parse(&identity.last_will(&metrics).message)),
    ]
}

#[test]
fn birth_periodic_offline_and_last_will_match_the_status_schema() {
    let s = strict(schema("status", 1));
    for (what, payload) in status_payloads() {
        check_valid(&s, &payload, what);
    }
    let written: BTreeSet<String> = status_payloads()
        .iter()
        .filter_map(|(_, v)| v.as_object())
        .flat_map(|o| o.keys().cloned())
        .collect();
    let declared: BTreeSet<String> = s["properties"]
        .as_object()
        .expect("properties")
        .keys()
        .cloned()
        .collect();
    assert_eq!(written, declared, "status.v1.json and the status messages");
}

#[test]
fn the_command_schema_accepts_what_the_gateway_obeys_and_refuses_what_it_rejects() {
    let s = schema("command", 1);
    let ok =
        json!({"command": "ack", "alarm_id": "l1/m1/temp:high", "occurrence": 42, "by": "j.doe"});
    check_valid(&s, &ok, "an acknowledgement");
    assert!(parse_command(ok.to_string().as_bytes(), false).is_ok());
    for bad in [
        json!({"command": "reboot", "alarm_id": "l1/m1/temp:high", "occurrence": 42}),
        json!({"command": "ack", "alarm_id": "l1/m1/temp:high"}),
        json!({"command": "ack", "occurrence": 42}),
    ] {
        assert!(!violations(&s, &bad).is_empty(), "the schema accepts {bad}");
        assert!(parse_command(bad.to_string().as_bytes(), false).is_err());
    }
}

// ---- Versions: fixtures and released schemas ----

/// `<kind>.v<N>.json` files of a directory, as (kind, N, path).
fn versioned_files(dir: &Path) -> Vec<(String, u32, PathBuf)> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("a directory entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let parsed = name
            .strip_suffix(".json")
            .and_then(|n| n.split_once(".v"))
            .and_then(|(kind, v)| Some((kind.to_owned(), v.parse().ok()?)));
        match parsed {
            Some((kind, version)) => files.push((kind, version, path)),
            None => panic!("{}: not named <kind>.v<N>.json", path.display()),
        }
    }
    files.sort();
    files
}

fn fixtures_dir() -> PathBuf {
    repo().join("gateway/tests/data/payloads")
}

fn released_dir() -> PathBuf {
    repo().join("gateway/tests/data/released-schemas")
}

/// Each fixture file holds an array of real payloads of one kind and
/// version; each stays valid against that version's schema.
#[test]
fn fixtures_of_every_schema_version_stay_valid() {
    let fixtures = versioned_files(&fixtures_dir());
    for (kind, version, path) in &fixtures {
        let s = schema(kind, *version);
        let examples = read_json(path);
        let examples = examples.as_array().expect("an array of payloads");
        assert!(!examples.is_empty(), "{}: no examples", path.display());
        for (i, payload) in examples.iter().enumerate() {
            check_valid(&s, payload, &format!("{}[{i}]", path.display()));
        }
    }
    let missing = schemas_without(&fixtures);
    assert!(
        missing.is_empty(),
        "{missing:?} of docs/schemas have no fixture: add \
         gateway/tests/data/payloads/<kind>.v<N>.json with real payloads"
    );
}

/// The files of docs/schemas that `files` has no `<kind>.v<N>.json` for.
fn schemas_without(files: &[(String, u32, PathBuf)]) -> Vec<String> {
    let have: BTreeSet<(&str, u32)> = files.iter().map(|(k, v, _)| (k.as_str(), *v)).collect();
    versioned_files(&repo().join("docs/schemas"))
        .into_iter()
        .filter(|(k, v, _)| !have.contains(&(k.as_str(), *v)))
        .map(|(k, v, _)| format!("{k}.v{v}.json"))
        .collect()
}

/// Every record kind has a schema of the version the core writes.
#[test]
fn the_current_schema_version_has_a_schema_for_every_record_kind() {
    for (kind, _) in RECORD_KINDS {
        let path = schema_path(kind, SCHEMA);
        assert!(
            path.exists(),
            "the core writes schema {SCHEMA}, but {} is missing",
            path.display()
        );
    }
}

/// Where `current` breaks a consumer that validates with `released`: a
/// declared field removed, a required field made optional, a type, const,
/// bound or pattern changed, or an enum value added. New optional fields and
/// new descriptions are compatible.
fn incompatibilities(released: &Value, current: &Value, at: &str, out: &mut Vec<String>) {
    let (Some(r), Some(c)) = (released.as_object(), current.as_object()) else {
        if released != current {
            out.push(format!("{at}: {released} became {current}"));
        }
        return;
    };
    for (key, rv) in r {
        let here = format!("{at}/{key}");
        let cv = c.get(key);
        match (key.as_str(), cv) {
            ("description" | "title" | "$comment" | "examples", _) => {}
            (_, None) => out.push(format!("{here}: removed")),
            ("properties", Some(cv)) => {
                for (name, rp) in rv.as_object().into_iter().flatten() {
                    match cv.get(name) {
                        Some(cp) => incompatibilities(rp, cp, &format!("{here}/{name}"), out),
                        None => out.push(format!("{here}/{name}: field removed")),
                    }
                }
            }
            ("required", Some(cv)) => {
                let now: Vec<&Value> = cv.as_array().into_iter().flatten().collect();
                for field in rv.as_array().into_iter().flatten() {
                    if !now.contains(&field) {
                        out.push(format!("{here}: {field} is no longer required"));
                    }
                }
            }
            ("enum", Some(cv)) => {
                let was: BTreeSet<String> = rv
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(Value::to_string)
                    .collect();
                for value in cv.as_array().into_iter().flatten() {
                    if !was.contains(&value.to_string()) {
                        out.push(format!("{here}: value {value} added"));
                    }
                }
            }
            (_, Some(cv)) => incompatibilities(rv, cv, &here, out),
        }
    }
}

const BUMP: &str = "bump the schema version: SCHEMA in gateway/src/model/payload.rs (the \
                    record kinds), a new docs/schemas/<kind>.v<N+1>.json with its fixture \
                    and released copy, and docs/payloads.md; a released schema may only \
                    gain optional fields";

/// A schema file once released is copied to `tests/data/released-schemas`;
/// the file in docs/schemas may change only compatibly with that copy.
#[test]
fn released_schemas_change_only_compatibly() {
    let released = versioned_files(&released_dir());
    for (kind, version, path) in &released {
        let current_path = schema_path(kind, *version);
        assert!(
            current_path.exists(),
            "{} was released and is gone: {BUMP}",
            current_path.display()
        );
        let mut problems = Vec::new();
        incompatibilities(&read_json(path), &schema(kind, *version), "", &mut problems);
        assert!(
            problems.is_empty(),
            "{} changed incompatibly since its release:\n  {}\n{BUMP}",
            current_path.display(),
            problems.join("\n  ")
        );
    }
    let missing = schemas_without(&released);
    assert!(
        missing.is_empty(),
        "{missing:?} of docs/schemas have no released copy: copy each to \
         gateway/tests/data/released-schemas/ when it ships"
    );
}

#[test]
fn the_compatibility_check_catches_a_removed_field_a_changed_type_and_a_new_enum_value() {
    let released = read_json(&released_dir().join("alarm.v1.json"));
    let problems = |edit: &dyn Fn(&mut Value)| {
        let mut current = released.clone();
        edit(&mut current);
        let mut out = Vec::new();
        incompatibilities(&released, &current, "", &mut out);
        out
    };
    assert!(problems(&|_| {}).is_empty());
    assert!(problems(&|s| {
        s["properties"]["new_optional"] = json!({"type": "string"});
        s["properties"]["seq"]["description"] = json!("reworded");
    })
    .is_empty());
    let removed = problems(&|s| {
        if let Some(p) = s["properties"].as_object_mut() {
            p.remove("peak");
        }
    });
    assert_eq!(removed, ["/properties/peak: field removed"]);
    let retyped = problems(&|s| s["properties"]["occurrence"]["type"] = json!("string"));
    assert_eq!(
        retyped,
        [r#"/properties/occurrence/type: "integer" became "string""#]
    );
    let optional = problems(&|s| {
        if let Some(r) = s["required"].as_array_mut() {
            r.retain(|f| f != "severity");
        }
    });
    assert_eq!(optional, [r#"/required: "severity" is no longer required"#]);
    let widened = problems(&|s| {
        if let Some(e) = s["properties"]["severity"]["enum"].as_array_mut() {
            e.push(json!("fatal"));
        }
    });
    assert_eq!(
        widened,
        [r#"/properties/severity/enum: value "fatal" added"#]
    );
}

/// The examples of docs/payloads.md match their schemas: the schema of the
/// record's `kind` and `schema`, the status schema for a `state`, the
/// command schema for a `command`.
#[test]
fn the_examples_of_the_payloads_doc_match_their_schemas() {
    let doc = std::fs::read_to_string(repo().join("docs/payloads.md")).expect("docs/payloads.md");
    let mut checked = BTreeSet::new();
    for block in doc.split("```json\n").skip(1) {
        let text = block.split("```").next().unwrap_or_default();
        let example: Value = serde_json::from_str(text)
            .unwrap_or_else(|e| panic!("docs/payloads.md: an example is not JSON ({e}):\n{text}"));
        let (kind, version) = if let Some(kind) = example["kind"].as_str() {
            let version = example["schema"]
                .as_u64()
                .and_then(|v| u32::try_from(v).ok());
            (kind.to_owned(), version.expect("a `schema` number"))
        } else if example.get("state").is_some() {
            ("status".to_owned(), 1)
        } else {
            ("command".to_owned(), 1)
        };
        check_valid(
            &strict(schema(&kind, version)),
            &example,
            &format!("the {kind} example of docs/payloads.md"),
        );
        checked.insert(kind);
    }
    let kinds: BTreeSet<String> = RECORD_KINDS
        .iter()
        .map(|(k, _)| *k)
        .chain(["status", "command"])
        .map(String::from)
        .collect();
    assert_eq!(
        checked, kinds,
        "docs/payloads.md has an example of every kind"
    );
}
