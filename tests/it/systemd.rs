//! Under systemd: the gateway speaks the `sd_notify` protocol to a real
//! notification socket (what systemd listens on): READY once running,
//! STATUS lines, WATCHDOG pings while the pipeline answers, RELOADING and
//! READY again on a reload, STOPPING on SIGTERM.

use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sensor_gateway_e2e::*;

/// Collects every datagram sent to a notification socket.
struct NotifySocket {
    path: String,
    seen: Arc<Mutex<Vec<String>>>,
}

impl NotifySocket {
    fn bind(dir: &std::path::Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind a notification socket");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let out = seen.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = sock.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                out.lock().unwrap().extend(text.lines().map(str::to_owned));
            }
        });
        NotifySocket {
            path: path.display().to_string(),
            seen,
        }
    }

    fn count(&self, line: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|l| *l == line)
            .count()
    }

    fn statuses(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| l.strip_prefix("STATUS=").map(str::to_owned))
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_systemd_it_reports_ready_status_watchdog_and_stopping() {
    let source = Broker::start(BrokerKind::Rumqttd).await;
    let upstream = Broker::start(BrokerKind::Rumqttd).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let notify = NotifySocket::bind(dir.path());
    let mut gw = Gateway::prepare(dir, &gateway_config(source.addr, upstream.addr, ""), &state);
    gw.env.push(("NOTIFY_SOCKET".into(), notify.path.clone()));
    // A 600 ms watchdog: the gateway asks its tasks every 200 ms.
    gw.env.push(("WATCHDOG_USEC".into(), "600000".into()));
    gw.restart();
    gw.wait_ready().await;
    wait_until("READY=1", Duration::from_secs(10), || {
        notify.count("READY=1") == 1
    })
    .await;
    wait_until(
        "watchdog pings while the pipeline answers",
        Duration::from_secs(10),
        || notify.count("WATCHDOG=1") >= 3,
    )
    .await;
    wait_until(
        "a STATUS line saying upstream is connected",
        Duration::from_secs(20),
        || {
            notify
                .statuses()
                .iter()
                .any(|s| s.starts_with("upstream connected; sources 1/1 up; backlog"))
        },
    )
    .await;
    // A reload (what `systemctl reload` does): RELOADING=1, then READY=1.
    let pid_file = gw.pid_file().display().to_string();
    let (code, out) = gw.command(&["reload", "--pid-file", &pid_file]);
    assert_eq!(code, 0, "{out}");
    wait_until("RELOADING=1 then READY=1", Duration::from_secs(10), || {
        notify.count("RELOADING=1") == 1 && notify.count("READY=1") == 2
    })
    .await;
    assert!(
        notify
            .statuses()
            .iter()
            .any(|s| s.starts_with("configuration reloaded; upstream")),
        "{:?}",
        notify.seen
    );
    assert!(gw.terminate(Duration::from_secs(15)).await.success());
    assert_eq!(notify.count("STOPPING=1"), 1, "{:?}", notify.seen);
    assert!(
        notify.statuses().iter().any(|s| s.starts_with("stopping")),
        "{:?}",
        notify.seen
    );
}
