//! `--config`: roles start from a TOML file alone; flags override it; a bad key is named.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use weir_testkit::free_port;

#[test]
fn roles_start_from_a_config_file_and_bad_keys_are_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (c, b) = (free_port(), free_port());
    let file = dir.path().join("weir.toml");
    std::fs::write(
        &file,
        format!(
            "[controller]\nid = 1\nlisten = \"127.0.0.1:{c}\"\ncontrollers = \"1=127.0.0.1:{c}\"\ndata_dir = \"{}\"\n\n[broker]\nid = 7\nlisten = \"127.0.0.1:{b}\"\ncontrollers = \"127.0.0.1:{c}\"\ndata_dir = \"{}\"\nreplica_lag_ms_max = 2000\n",
            dir.path().join("c").display(),
            dir.path().join("b").display()
        ),
    )
    .expect("write config");
    let weir = env!("CARGO_BIN_EXE_weir");
    let mut controller = Command::new(weir)
        .args(["controller", "--config"])
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("controller");
    let mut broker = Command::new(weir)
        .args(["broker", "--config"])
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("broker");
    let bootstrap = format!("127.0.0.1:{c}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let out = Command::new(weir)
            .args(["cluster", "status", "--bootstrap", &bootstrap])
            .output()
            .expect("status");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.contains("broker 7") && text.contains("alive") {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "the cluster from the file never formed: {text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(status.contains(&format!("127.0.0.1:{b}")), "{status}");
    let _ = controller.kill();
    let _ = broker.kill();
    let _ = controller.wait();
    let _ = broker.wait();

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[broker]\nid = 1\nreplica_lag_ms = 5\n").expect("write");
    let out = Command::new(weir)
        .args(["broker", "--config"])
        .arg(&bad)
        .output()
        .expect("broker");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("replica_lag_ms"), "{err}");
    let out = Command::new(weir)
        .args(["controller"])
        .output()
        .expect("controller");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--id"));
    for bad in ["0", "many"] {
        let out = Command::new(weir)
            .args(["--worker-threads", bad, "dev"])
            .output()
            .expect("dev");
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--worker-threads"), "{err}");
    }
}
