//! The `sensor-sim` command line against its own embedded broker: `run`
//! publishes exactly what it is asked to, `count` receives it all.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn sim() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sensor-sim"))
}

fn configs_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs")
}

#[test]
fn every_scenario_in_configs_parses() {
    let mut n = 0;
    for entry in std::fs::read_dir(configs_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("sim-")
        {
            sensor_sim::scenario::Scenario::load(&path).unwrap();
            n += 1;
        }
    }
    assert!(n >= 2);
}

struct Kill(std::process::Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn run_publishes_exactly_count_messages_to_the_embedded_broker() {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let _broker = Kill(
        sim()
            .args(["broker", "--listen", &addr.to_string()])
            .env("RUST_LOG", "off")
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "broker did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut counter = sim()
        .args([
            "count",
            "--broker",
            &addr.to_string(),
            "--topic",
            "plant/#",
            "--idle",
            "1s",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the counter has subscribed.
    let mut stderr = std::io::BufReader::new(counter.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("subscribed") {
        line.clear();
        assert!(
            std::io::BufRead::read_line(&mut stderr, &mut line).unwrap() > 0,
            "counter exited early"
        );
    }
    let out = sim()
        .args(["run", "--scenario"])
        .arg(configs_dir().join("sim-plant.toml"))
        .args([
            "--broker",
            &addr.to_string(),
            "--count",
            "1500",
            "--rate",
            "5000",
            "--qos",
            "1",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("published=1500 "));
    let counted = counter.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&counted.stdout).trim(),
        "received=1500"
    );
}
