//! The command line as a user meets it: clear errors for bad input, and a full
//! attach / add / status / remove / detach cycle on an interface of a namespace it creates.

use std::process::{Command, Output};

fn agent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dots-agent"))
        .args(args)
        .output()
        .expect("running dots-agent")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn temp_file(name: &str, text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

#[test]
fn a_bad_mitigation_file_is_refused_with_the_reason() {
    let (_d, path) = temp_file("m.toml", "id = 1\ntargets = [\"198.51.100.7/24\"]\n");
    let o = agent(&["xdp", "mitigation", "check", path.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("has host bits set: use 198.51.100.0/24"),
        "{}",
        stderr(&o)
    );

    let (_d, path) = temp_file(
        "m.toml",
        "id = 1\ntargets = [\"198.51.100.0/24\"]\nbogus = 3\n",
    );
    let o = agent(&["xdp", "mitigation", "check", path.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("bogus"), "{}", stderr(&o));

    let o = agent(&["xdp", "mitigation", "check", "/nonexistent/m.toml"]);
    assert!(
        stderr(&o).contains("reading /nonexistent/m.toml"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn pki_init_writes_certificates_and_prints_cuids() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("pki");
    let o = agent(&[
        "pki",
        "init",
        "--dir",
        d.to_str().unwrap(),
        "--server-name",
        "dots.example",
        "--server-ip",
        "192.0.2.1",
        "--client",
        "client-a",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("client client-a: cuid "), "{out}");
    assert!(d.join("server.key").exists() && d.join("client-a.pem").exists());
    let o = agent(&[
        "pki",
        "init",
        "--dir",
        d.to_str().unwrap(),
        "--server-name",
        "x",
        "--client",
        "client-a",
    ]);
    assert!(stderr(&o).contains("already holds a CA"), "{}", stderr(&o));
}

#[test]
fn the_shipped_example_is_valid() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/lab-mitigation.toml"
    );
    let o = agent(&["xdp", "mitigation", "check", path]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn commands_without_a_datapath_say_what_to_do() {
    let o = agent(&[
        "xdp",
        "status",
        "--pin-root",
        "/sys/fs/bpf/dots-cli-none",
        "--interval",
        "0",
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("dots-agent xdp attach"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn attach_add_status_remove_detach_on_a_namespace_interface() {
    let ns = format!("dots-cli-{}", std::process::id());
    let pins = format!("/sys/fs/bpf/dots-cli-{}", std::process::id());
    let state = tempfile::tempdir().unwrap();
    let state = state.path().to_str().unwrap().to_string();
    struct Cleanup(String, String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
            let _ = std::fs::remove_dir_all(&self.1);
        }
    }
    let _cleanup = Cleanup(ns.clone(), pins.clone());
    let run = |args: &[&str]| Command::new("ip").args(args).output().expect("ip");
    assert!(run(&["netns", "add", &ns]).status.success());
    assert!(
        run(&["-n", &ns, "link", "add", "cli0", "type", "veth", "peer", "name", "cli1"])
            .status
            .success()
    );
    assert!(run(&["-n", &ns, "link", "set", "cli0", "up"])
        .status
        .success());
    let in_ns = |args: &[&str]| -> Output {
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{ns}"))
            .arg(env!("CARGO_BIN_EXE_dots-agent"))
            .args(args)
            .args(["--pin-root", &pins, "--state-dir", &state])
            .output()
            .expect("nsenter")
    };
    let o = in_ns(&["xdp", "attach", "--interface", "cli0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("cli0: attached in"));
    let file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/lab-mitigation.toml"
    );
    let o = in_ns(&["xdp", "mitigation", "add", file]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = in_ns(&["xdp", "status", "--interval", "0", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("status JSON");
    assert_eq!(v["interfaces"][0]["name"], "cli0");
    assert_eq!(v["mitigations"][0]["operator_id"], 1);
    assert_eq!(v["mitigations"][0]["owner"], "operator mitigation 1");
    assert_eq!(v["mitigations"][0]["acl"][0]["name"], "udp-9999-flood");
    assert_eq!(
        v["mitigations"][0]["top_talkers"],
        serde_json::json!([]),
        "no drops yet"
    );
    let o = in_ns(&["xdp", "mitigation", "remove", "7"]);
    assert!(
        !o.status.success() && stderr(&o).contains("no mitigation 7"),
        "{}",
        stderr(&o)
    );
    let o = in_ns(&["xdp", "mitigation", "remove", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = in_ns(&["xdp", "detach", "--all", "--purge"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!std::path::Path::new(&pins).exists());
}

#[test]
fn server_and_client_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = d.to_str().unwrap();
    let o = agent(&[
        "pki",
        "init",
        "--dir",
        pki,
        "--server-name",
        "dots.example",
        "--server-ip",
        "127.0.0.1",
        "--client",
        "client-a",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // A port of our own for this run (loopback only).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        d.join("server.toml"),
        format!(
            "[signal]\nlisten = [\"127.0.0.1:{port}\"]\nterminating_seconds = 0\n[tls]\nca = \"ca.pem\"\ncert = \"server.pem\"\nkey = \"server.key\"\n\
             [store]\ndir = \"state\"\n[[client]]\nname = \"client-a\"\nprefixes = [\"198.51.100.0/24\"]\n"
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("client.toml"),
        format!("server = \"127.0.0.1:{port}\"\nserver_name = \"dots.example\"\n[tls]\nca = \"ca.pem\"\ncert = \"client-a.pem\"\nkey = \"client-a.key\"\n"),
    )
    .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _server = Kill(
        Command::new(env!("CARGO_BIN_EXE_dots-agent"))
            .args([
                "server",
                "--config",
                d.join("server.toml").to_str().unwrap(),
            ])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let client_toml = d.join("client.toml");
    let client = |args: &[&str]| {
        let mut all = vec!["client", "--config", client_toml.to_str().unwrap()];
        all.extend_from_slice(args);
        agent(&all)
    };
    // The server may take a moment to listen.
    let mut created = None;
    for _ in 0..50 {
        let o = client(&[
            "mitigate",
            "--mid",
            "1",
            "--target",
            "198.51.100.7/32",
            "--port",
            "80",
            "--protocol",
            "6",
        ]);
        if o.status.success() {
            created = Some(o);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let created = created.expect("the server answered within 10 s");
    assert!(
        String::from_utf8_lossy(&created.stdout).starts_with("2.01 "),
        "{}",
        String::from_utf8_lossy(&created.stdout)
    );
    let o = client(&["--json", "status", "--mid", "1"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(v["code"], "2.05");
    assert!(v["body"]
        .as_str()
        .unwrap()
        .contains("\"target-prefix\":[\"198.51.100.7/32\"]"));
    let o = client(&[
        "efficacy",
        "--mid",
        "1",
        "--target",
        "198.51.100.7/32",
        "--port",
        "80",
        "--protocol",
        "6",
        "--attack-status",
        "mitigated",
    ]);
    assert!(
        String::from_utf8_lossy(&o.stdout).starts_with("2.04"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let o = client(&["mitigate", "--mid", "2", "--target", "203.0.113.0/24"]);
    assert_eq!(o.status.code(), Some(2), "refusals exit 2");
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("4.03"));
    // Watching for 3 s with a heartbeat after each quiet second.
    let o = client(&[
        "watch",
        "--mid",
        "1",
        "--seconds",
        "3",
        "--heartbeat-every",
        "1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).starts_with("2.05"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let o = client(&[
        "config",
        "set",
        "--sid",
        "1",
        "--heartbeat-interval",
        "60",
        "--ack-timeout",
        "2.5",
    ]);
    assert!(
        String::from_utf8_lossy(&o.stdout).starts_with("2.01"),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        stderr(&o)
    );
    let o = client(&["config", "get"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.starts_with("2.05")
            && out.contains("\"current-value\":60")
            && out.contains("\"current-value-decimal\":\"2.50\""),
        "{out}"
    );
    let o = client(&["config", "set", "--sid", "2", "--heartbeat-interval", "5"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stdout).starts_with("4.22"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let o = client(&["withdraw", "--mid", "1"]);
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("2.02"));
    let o = client(&[
        "mitigate",
        "--mid",
        "3",
        "--target",
        "198.51.100.7/32",
        "--lifetime",
        "0",
    ]);
    assert!(stderr(&o).contains("--lifetime 0"), "{}", stderr(&o));
}
