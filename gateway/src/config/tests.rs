use std::time::Duration;

use super::*;
use crate::decode::PayloadFormat;

fn parse(text: &str) -> Result<Config, Vec<Diagnostic>> {
    match Config::parse(text, Path::new("test.toml")) {
        Ok(c) => Ok(c),
        Err(ConfigError::Invalid { diagnostics, .. }) => Err(diagnostics),
        Err(e) => panic!("unexpected error {e}"),
    }
}

const MINIMAL: &str = r#"
[gateway]
id = "gw-1"

[[source]]
kind = "mqtt"
broker = "127.0.0.1:1883"
topic_template = "plant/{line}/{machine}/{sensor}"

[upstream]
broker = "127.0.0.1:1884"
"#;

#[test]
fn minimal_config_gets_defaults() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.gateway.id, "gw-1");
    let SourceConfig::Mqtt(m) = &c.sources[0] else {
        panic!("an MQTT source")
    };
    assert_eq!(m.topics, vec!["plant/+/+/+".to_owned()]);
    assert_eq!(m.payload, PayloadFormat::json_default());
    assert_eq!(
        c.upstream.brokers,
        vec![BrokerAddr {
            host: "127.0.0.1".into(),
            port: 1884
        }]
    );
    assert_eq!(c.upstream.protocol, crate::config::Protocol::V5);
    assert_eq!(
        c.upstream.summary_topic.as_str(),
        "gateways/{gateway}/summary/{sensor}"
    );
    assert_eq!(c.upstream.reconnect_backoff_max, Duration::from_secs(30));
    assert_eq!(c.upstream.inflight, 32);
    // The effective config is itself a valid config that means the same.
    let again = parse(&c.render_effective()).unwrap();
    assert_eq!(again.render_effective(), c.render_effective());
}

#[test]
fn three_mistakes_are_all_reported_with_lines() {
    let text = r#"
[gateway]
id = "gw-1"
metrics_interval = "often"

[[source]]
kind = "mqtt"
broker = "127.0.0.1:1883"
topic_template = "plant/{line}/{machine}/{sensor}"
qos = 1

[[sensor]]
match = "*/temperature"
min = 200.0
max = -40.0

[upstream]
brokr = "127.0.0.1:1884"
"#;
    let diags = parse(text).unwrap_err();
    let lines: Vec<usize> = diags.iter().map(|d| d.line).collect();
    assert_eq!(lines, vec![4, 15, 18], "{diags:#?}");
    assert!(diags[0].message.contains("not a duration"));
    assert!(diags[1].message.contains("greater than `min`"));
    assert!(diags[2].message.contains("unknown field `brokr`"));
    assert!(diags.iter().all(|d| d.hint.is_some()), "{diags:#?}");
}

#[test]
fn unknown_sections_kinds_and_stats_are_named() {
    let text = format!(
        "{MINIMAL}\n[upstrem]\nx = 1\n\n[[source]]\nkind = \"modbus\"\n\n[[sensor]]\nmatch = \"*\"\nstats = [\"mean\", \"stdev\"]\n"
    );
    let diags = parse(&text).unwrap_err();
    let msgs: Vec<&str> = diags.iter().map(|d| d.message.as_str()).collect();
    assert!(
        msgs.iter().any(|m| m.contains("unknown section `upstrem`")),
        "{msgs:?}"
    );
    assert!(
        msgs.iter()
            .any(|m| m.contains("unknown source kind `modbus`")),
        "{msgs:?}"
    );
    assert!(
        msgs.iter().any(|m| m.contains("unknown statistic `stdev`")),
        "{msgs:?}"
    );
    let upstrem = diags
        .iter()
        .find(|d| d.message.contains("upstrem"))
        .unwrap();
    assert_eq!(upstrem.hint.as_deref(), Some("did you mean `upstream`?"));
}

#[test]
fn syntax_error_has_a_line() {
    let diags = parse("[gateway]\nid = = 1\n").unwrap_err();
    assert_eq!(diags.len(), 1);
    assert_eq!(diags[0].line, 2);
}

#[test]
fn bad_values_in_every_section() {
    let text = r#"
[gateway]
id = "a/b"

[[source]]
kind = "mqtt"
broker = "no-port:"
topic_template = "plant/#"
qos = 3

[upstream]
broker = "127.0.0.1:1884"
summary_topic = "gw/{gatway}/{sensor}"
qos = 0
"#;
    let diags = parse(text).unwrap_err();
    let lines: Vec<usize> = diags.iter().map(|d| d.line).collect();
    assert_eq!(lines, vec![3, 7, 8, 9, 13, 14], "{diags:#?}");
}

#[test]
fn missing_sections_are_reported() {
    let diags = parse("[gateway]\nid = \"g\"\n").unwrap_err();
    assert!(
        diags.iter().any(|d| d.message.contains("[upstream]")),
        "{diags:#?}"
    );
}

#[test]
fn default_source_client_ids_name_the_gateway() {
    let c = parse(MINIMAL).unwrap();
    let SourceConfig::Mqtt(m) = &c.sources[0] else {
        panic!("an MQTT source")
    };
    assert_eq!(m.client_id, "sensor-gateway-gw-1-mqtt");
    let other = parse(&MINIMAL.replace("gw-1", "gw-2")).unwrap();
    let SourceConfig::Mqtt(o) = &other.sources[0] else {
        panic!("an MQTT source")
    };
    assert_ne!(
        m.client_id, o.client_id,
        "two gateways never share a session"
    );
}

#[test]
fn duplicate_client_ids_are_reported_with_both_lines() {
    let text = format!(
        "{MINIMAL}\n[[source]]\nkind = \"mqtt\"\nname = \"b\"\nbroker = \"127.0.0.1:1883\"\nclient_id = \"same\"\ntopic_template = \"a/{{sensor}}\"\n\n[[source]]\nkind = \"mqtt\"\nname = \"c\"\nbroker = \"127.0.0.1:1883\"\nclient_id = \"same\"\ntopic_template = \"b/{{sensor}}\"\n"
    );
    let diags = parse(&text).unwrap_err();
    assert_eq!(diags.len(), 1, "{diags:?}");
    let first_line = text
        .lines()
        .position(|l| l.contains("client_id = \"same\""))
        .unwrap()
        + 1;
    assert!(
        diags[0]
            .message
            .contains(&format!("already used on line {first_line}")),
        "{diags:?}"
    );
}

/// The messages of the mistakes in `text`.
fn messages(text: &str) -> Vec<String> {
    parse(text)
        .unwrap_err()
        .into_iter()
        .map(|d| d.message)
        .collect()
}

#[test]
fn a_segment_too_big_to_read_into_memory_is_refused() {
    // 4 GiB: at most a quarter of max_disk_bytes, but a 32-bit gateway could
    // never read such a segment back at start-up.
    let text =
        format!("{MINIMAL}\n[buffer]\nmax_disk_bytes = 17179869184\nsegment_bytes = 4294967296\n");
    let msgs = messages(&text);
    assert!(
        msgs.iter()
            .any(|m| m.starts_with("`segment_bytes` must be") && m.contains("64 MiB")),
        "{msgs:?}"
    );
    let ok =
        format!("{MINIMAL}\n[buffer]\nmax_disk_bytes = 17179869184\nsegment_bytes = 67108864\n");
    assert_eq!(parse(&ok).unwrap().buffer.segment_bytes, 64 * 1024 * 1024);
}

#[test]
fn a_failed_output_template_hides_no_other_upstream_mistake() {
    let text = MINIMAL.replace(
        "broker = \"127.0.0.1:1884\"",
        "broker = \"127.0.0.1:1884\"\nsummary_topic = \"x/{nope}/{sensor}\"\ninflight = 0",
    );
    let msgs = messages(&text);
    let found = |start: &str| msgs.iter().any(|m| m.starts_with(start));
    assert!(
        found("bad summary_topic") && found("`inflight` must be"),
        "{msgs:?}"
    );
}

#[test]
fn a_bad_topic_template_defines_no_labels() {
    let text = MINIMAL
        .replace("plant/{line}/{machine}/{sensor}", "plant/{bad")
        .replace(
            "broker = \"127.0.0.1:1884\"",
            "broker = \"127.0.0.1:1884\"\nsummary_topic = \"x/{line}/{sensor}\"",
        );
    let msgs = messages(&text);
    assert!(
        msgs.iter().any(|m| m.starts_with("bad summary_topic")
            && m.ends_with("known placeholders: {gateway}, {sensor}")),
        "{msgs:?}"
    );
}

#[test]
fn every_named_value_renders_and_reads_back() {
    let text = format!(
        r#"{MINIMAL}
[[source]]
kind = "mqtt"
name = "us"
broker = "h:1"
topic_template = "p/{{sensor}}"
payload = {{ format = "json", timestamp_unit = "us" }}

[[source]]
kind = "mqtt"
name = "n"
broker = "h:2"
topic_template = "q/{{sensor}}"
payload = {{ format = "number" }}

[[source]]
kind = "serial"
device = "/dev/ttyS0"
parity = "even"
flow_control = "hardware"
format = "line"
checksum = "required"
node_time = "unix_ms"
unmapped = "drop"

[[source]]
kind = "serial"
device = "/dev/ttyS1"
parity = "odd"
format = "frame"
node_time = "ignore"

[[sensor]]
match = "*"
stats = ["p90", "first", "crest", "count"]
delivery = "on_change"
deadband = 0.5

[[sensor]]
match = "a/*"
delivery = "raw"
[sensor.alarm]
high = 5.0
rate_of_change = 1.0
rate_direction = "both"
severity = {{ high = "info", rate_of_change = "critical" }}

[buffer]
durability = "always"
when_full = "block"
"#
    );
    let c = parse(&text).unwrap();
    let out = c.render_effective();
    for line in [
        "timestamp_unit = \"us\"",
        "format = \"number\"",
        "parity = \"even\"",
        "flow_control = \"hardware\"",
        "checksum = \"required\"",
        "node_time = \"unix_ms\"",
        "unmapped = \"drop\"",
        "format = \"frame\"",
        "node_time = \"ignore\"",
        "stats = [\"count\", \"crest\", \"p90\", \"first_last\"]",
        "delivery = \"on_change\"",
        "delivery = \"raw\"",
        "rate_direction = \"both\"",
        "severity = { high = \"info\", rate_of_change = \"critical\" }",
        "durability = \"always\"",
        "when_full = \"block\"",
    ] {
        assert!(out.contains(line), "{line} missing from\n{out}");
    }
    let again = parse(&out).unwrap();
    assert_eq!(again.render_effective(), out);
}

#[test]
fn the_status_topic_defaults_per_gateway_and_refuses_wildcards() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.upstream.status_topic, "gateways/gw-1/status");
    assert_eq!(c.upstream.status_interval, Duration::from_secs(60));
    let bad = MINIMAL.to_owned() + "status_topic = \"gw/+/status\"\nstatus_interval = \"10ms\"\n";
    let errors = parse(&bad).unwrap_err();
    let text: Vec<_> = errors.iter().map(|d| (d.line, d.message.clone())).collect();
    assert!(
        text.iter()
            .any(|(l, m)| *l == 12 && m.contains("`status_topic` must be a plain topic")),
        "{text:?}"
    );
    assert!(
        text.iter()
            .any(|(l, m)| *l == 13 && m.contains("at least 1s")),
        "{text:?}"
    );
}

#[test]
fn the_config_digest_is_what_sha256sum_prints_for_the_file() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.digest.len(), 64);
    assert_eq!(
        digest("abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_eq!(c.digest, digest(MINIMAL));
}

#[test]
fn without_an_http_section_there_is_no_http_server() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.http, None);
    assert!(c.render_effective().contains("# [http] is absent"));
}

#[test]
fn an_empty_http_section_listens_on_loopback() {
    let c = parse(&format!("{MINIMAL}\n[http]\n")).unwrap();
    let http = c.http.as_ref().unwrap();
    assert_eq!(http.listen.to_string(), HttpConfig::DEFAULT_LISTEN);
    assert!(http.listen.ip().is_loopback());
    let again = parse(&c.render_effective()).unwrap();
    assert_eq!(again.http, c.http);
}

#[test]
fn a_non_loopback_http_address_is_refused_at_its_line_unless_allowed() {
    for addr in ["0.0.0.0:9108", "192.0.2.7:9108", "[::]:9108"] {
        let text = format!("{MINIMAL}\n[http]\nlisten = \"{addr}\"\n");
        let diags = parse(&text).unwrap_err();
        assert_eq!(diags.len(), 1, "{diags:?}");
        let line = text.lines().position(|l| l.starts_with("listen")).unwrap() + 1;
        assert_eq!(diags[0].line, line);
        assert!(diags[0].message.contains("can be reached from other hosts"));
        assert!(diags[0]
            .hint
            .as_deref()
            .unwrap()
            .contains("allow_non_loopback = true"));
        let allowed = parse(&format!("{text}allow_non_loopback = true\n")).unwrap();
        assert_eq!(allowed.http.unwrap().listen.to_string(), addr);
    }
    let v6 = parse(&format!("{MINIMAL}\n[http]\nlisten = \"[::1]:9108\"\n")).unwrap();
    assert!(v6.http.unwrap().listen.ip().is_loopback());
}

#[test]
fn an_http_address_without_a_port_or_with_a_host_name_is_refused() {
    for addr in ["127.0.0.1", "localhost:9108", ""] {
        let msgs = messages(&format!("{MINIMAL}\n[http]\nlisten = \"{addr}\"\n"));
        assert_eq!(msgs, [format!("`{addr}` is not an IP address and port")]);
    }
    let msgs = messages(&format!("{MINIMAL}\n[http]\nport = 9108\n"));
    assert!(msgs[0].contains("unknown field `port`"), "{msgs:?}");
}

#[test]
fn a_source_name_used_twice_is_reported_with_both_lines() {
    let text = MINIMAL.to_owned()
        + "\n[[source]]\nkind = \"mqtt\"\nname = \"plant\"\nbroker = \"127.0.0.1:1885\"\nclient_id = \"a\"\ntopic_template = \"p/{sensor}\"\n"
        + "\n[[source]]\nkind = \"serial\"\nname = \"plant\"\ndevice = \"/dev/ttyUSB0\"\nformat = \"line\"\n";
    let msgs = messages(&text);
    assert!(
        msgs.iter()
            .any(|m| m.contains("the source name `plant` is already used on line 15")),
        "{msgs:?}"
    );
}

#[test]
fn the_clock_is_trusted_from_the_build_time_unless_configured_and_a_bad_date_is_reported() {
    let c = parse(MINIMAL).unwrap();
    assert!(!c.clock.require_sync);
    assert_eq!(c.clock.not_before_ms, ClockConfig::build_time_ms());
    assert!(
        c.clock.not_before_ms > 1_767_225_600_000,
        "built after 2026-01-01"
    );
    let text =
        format!("{MINIMAL}\n[clock]\nrequire_sync = true\nnot_before = \"2026-01-01T00:00:00Z\"\n");
    let c = parse(&text).unwrap();
    assert!(c.clock.require_sync);
    assert_eq!(c.clock.not_before_ms, 1_767_225_600_000);
    assert_eq!(parse(&c.render_effective()).unwrap().clock, c.clock);
    let diags = parse(&format!("{MINIMAL}\n[clock]\nnot_before = \"yesterday\"\n")).unwrap_err();
    assert_eq!(diags.len(), 1);
    assert!(diags[0]
        .message
        .contains("`yesterday` is not a date and time"));
}

#[test]
fn a_cluster_is_listed_in_brokers_in_the_order_tried() {
    let text = MINIMAL.replace(
        "broker = \"127.0.0.1:1884\"",
        "brokers = [\"a.fleet:8883\", \"b.fleet:8883\", \"c.fleet\"]\nprotocol = \"3.1.1\"",
    );
    let c = parse(&text).unwrap();
    let listed: Vec<String> = c.upstream.brokers.iter().map(|b| b.to_string()).collect();
    assert_eq!(listed, ["a.fleet:8883", "b.fleet:8883", "c.fleet:1883"]);
    assert_eq!(c.upstream.protocol, crate::config::Protocol::V311);
    // `check` prints what it read, and what it prints reads back.
    let rendered = c.render_effective();
    assert!(rendered.contains("brokers = [\"a.fleet:8883\", \"b.fleet:8883\", \"c.fleet:1883\"]\nprotocol = \"3.1.1\""), "{rendered}");
}

#[test]
fn broker_lists_that_cannot_be_meant_are_refused() {
    let both = MINIMAL.replace(
        "broker = \"127.0.0.1:1884\"",
        "broker = \"a:1\"\nbrokers = [\"b:1\"]",
    );
    assert!(messages(&both)[0].contains("both `broker` and `brokers`"));
    let twice = MINIMAL.replace(
        "broker = \"127.0.0.1:1884\"",
        "brokers = [\"a:1\", \"a:1\"]",
    );
    assert!(messages(&twice)[0].contains("`a:1` is listed twice"));
    let empty = MINIMAL.replace("broker = \"127.0.0.1:1884\"", "brokers = []");
    assert!(messages(&empty)[0].contains("`brokers` is empty"));
    let none = MINIMAL.replace("broker = \"127.0.0.1:1884\"", "");
    assert!(messages(&none)[0].contains("needs `broker`"));
    let v4 = MINIMAL.replace(
        "broker = \"127.0.0.1:1884\"",
        "broker = \"a:1\"\nprotocol = \"4\"",
    );
    assert!(messages(&v4)[0].contains("unknown protocol `4`"));
}

#[test]
fn batching_is_off_unless_configured() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.upstream.batch, BatchConfig::off("gw-1"));
    assert!(!c.upstream.batch.enveloped());
    assert_eq!(c.upstream.batch.topic, "gateways/gw-1/batch");
}

#[test]
fn a_batch_section_is_read_and_rendered_back() {
    let text = format!(
        "{MINIMAL}\n[upstream.batch]\nmax_records = 100\nmax_bytes = 32768\nmax_delay = \"30s\"\nencoding = \"cbor\"\ncompression = \"zstd\"\ntopic = \"fleet/{{gateway}}/b\"\n"
    );
    let c = parse(&text).unwrap();
    let b = &c.upstream.batch;
    assert_eq!(
        (b.max_records, b.max_bytes, b.max_delay),
        (100, 32768, Duration::from_secs(30))
    );
    assert_eq!(
        (b.encoding, b.compression),
        (
            crate::envelope::Encoding::Cbor,
            crate::envelope::Compression::Zstd
        )
    );
    assert_eq!(b.topic, "fleet/gw-1/b");
    assert!(b.enveloped());
    let again = parse(&c.render_effective()).unwrap();
    assert_eq!(again.upstream.batch, c.upstream.batch);
}

#[test]
fn every_batch_mistake_is_reported_with_its_line() {
    let text = format!(
        "{MINIMAL}\n[upstream.batch]\nmax_records = 5000\nmax_bytes = 2000000\nmax_delay = \"0s\"\nencoding = \"xml\"\ncompression = \"zsdt\"\ntopic = \"a/+/b\"\n"
    );
    let diags = parse(&text).unwrap_err();
    let lines: Vec<usize> = diags.iter().map(|d| d.line).collect();
    assert_eq!(lines, vec![14, 15, 16, 17, 18, 19], "{diags:#?}");
    assert!(diags[0]
        .message
        .contains("`max_records` must be within 1..=1000"));
    assert!(diags[3].message.contains("unknown encoding `xml`"));
    assert!(diags[4]
        .hint
        .as_deref()
        .is_some_and(|h| h.contains("\"zstd\"")));
    assert!(diags.iter().all(|d| d.hint.is_some()), "{diags:#?}");
}

// The largest batch fits an upstream packet twice over, so CBOR entries
// that outgrow their JSON estimate still fit.
const _: () = assert!(2 * BatchConfig::MAX_BYTES <= crate::upstream::MAX_PACKET_BYTES);

#[test]
fn an_unusable_upstream_tls_file_fails_check_but_not_a_starting_gateway() {
    let text = MINIMAL.replace(
        "broker = \"127.0.0.1:1884\"",
        "broker = \"127.0.0.1:1884\"\n\n[upstream.tls]\nca_file = \"/nonexistent/fleet-ca.pem\"",
    );
    // `check` and a reload: a mistake with its line.
    let strict = messages(&text);
    assert!(
        strict
            .iter()
            .any(|m| m.contains("/nonexistent/fleet-ca.pem")),
        "{strict:?}"
    );
    // A starting gateway runs and buffers; the file is named for the log.
    let c = Config::parse_as(&text, Path::new("t.toml"), false).unwrap();
    assert_eq!(c.deferred.len(), 1, "{:?}", c.deferred);
    assert!(c.deferred[0].starts_with("t.toml:"), "{}", c.deferred[0]);
    assert!(c.deferred[0].contains("/nonexistent/fleet-ca.pem"));
    assert!(c.upstream.tls.is_some());
}
