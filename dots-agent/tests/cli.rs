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
    // --watch --json: one object per line, until stopped.
    let mut watch = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .arg(env!("CARGO_BIN_EXE_dots-agent"))
        .args(["xdp", "status", "--watch", "--json", "--interval", "0.1"])
        .args(["--pin-root", &pins, "--state-dir", &state])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("nsenter");
    let lines = lines_of(&mut watch);
    for _ in 0..2 {
        let line = lines
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("a sample");
        let v: serde_json::Value = serde_json::from_str(&line).expect("one object per line");
        assert_eq!(v["mitigations"][0]["operator_id"], 1);
    }
    sigterm(&watch);
    let _ = watch.wait();
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

/// A server (signal and data channels, no datapath) on loopback ports of its own, with
/// certificates from `pki init`; killed (and reaped) when dropped unless stopped first.
struct Server {
    child: std::process::Child,
    dir: tempfile::TempDir,
    stderr: std::path::PathBuf,
    data: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn pki_and_server() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let o = agent(&[
        "pki",
        "init",
        "--dir",
        d.to_str().unwrap(),
        "--server-name",
        "dots.example",
        "--server-ip",
        "127.0.0.1",
        "--client",
        "client-a",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (port, data_port) = (free_port(), free_port());
    std::fs::write(
        d.join("server.toml"),
        format!(
            "[signal]\nlisten = [\"127.0.0.1:{port}\"]\nterminating_seconds = 0\n[data]\nlisten = [\"127.0.0.1:{data_port}\"]\n\
             [tls]\nca = \"ca.pem\"\ncert = \"server.pem\"\nkey = \"server.key\"\n\
             [store]\ndir = \"state\"\n[[client]]\nname = \"client-a\"\nprefixes = [\"198.51.100.0/24\"]\n"
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("client.toml"),
        format!("server = \"127.0.0.1:{port}\"\nserver_name = \"dots.example\"\n[tls]\nca = \"ca.pem\"\ncert = \"client-a.pem\"\nkey = \"client-a.key\"\n"),
    )
    .unwrap();
    let stderr = d.join("server.log");
    let child = Command::new(env!("CARGO_BIN_EXE_dots-agent"))
        .args([
            "server",
            "--config",
            d.join("server.toml").to_str().unwrap(),
        ])
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    Server {
        child,
        dir,
        stderr,
        data: format!("127.0.0.1:{data_port}"),
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Lines of a child's stdout, read on a thread so that a test can wait for one with a bound.
fn lines_of(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let out = child.stdout.take().expect("stdout piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(|l| l.ok()) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn sigterm(child: &std::process::Child) {
    // SAFETY: kill(2) on the pid of a child we started and have not reaped.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
}

#[test]
fn server_and_client_from_the_command_line() {
    let mut server = pki_and_server();
    let d = server.dir.path().to_path_buf();
    let client_toml = d.join("client.toml");
    let client_cmd = |args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_dots-agent"));
        c.args(["client", "--config", client_toml.to_str().unwrap()]);
        c.args(args);
        c
    };
    let client = |args: &[&str]| client_cmd(args).output().expect("running the client");
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
    assert_eq!(stdout(&created), "2.01 Created: mid 1 granted for 3600 s\n");

    // --json: one object per response on one line, the body an object.
    let o = client(&["--json", "status", "--mid", "1"]);
    assert_eq!((o.status.code(), stdout(&o).lines().count()), (Some(0), 1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(v["code"], "2.05");
    let scope = &v["body"]["ietf-dots-signal-channel:mitigation-scope"]["scope"][0];
    assert_eq!(
        scope["target-prefix"],
        serde_json::json!(["198.51.100.7/32"])
    );
    // For people: statuses by name.
    let o = client(&["status"]);
    assert!(
        stdout(&o).starts_with("2.05 Content: mid 1: 2 active (attack-successfully-mitigated), targets 198.51.100.7/32 port 80 protocol 6,"),
        "{}",
        stdout(&o)
    );
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
    assert!(stdout(&o).starts_with("2.04 Changed"), "{}", stdout(&o));

    // Refused by the server: 3, with the diagnostic.
    let o = client(&["mitigate", "--mid", "2", "--target", "203.0.113.0/24"]);
    assert_eq!(o.status.code(), Some(3), "refusals exit 3");
    assert!(stdout(&o).starts_with("4.03 Forbidden: "), "{}", stdout(&o));

    // Watching for 3 s: the first answer, then the status every half second while the
    // mitigation is active, one JSON object per line.
    let o = client(&[
        "--json",
        "watch",
        "--mid",
        "1",
        "--seconds",
        "3",
        "--heartbeat-every",
        "1",
        "--interval",
        "0.5",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let events: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(events[0]["source"], "response");
    assert!(
        events.iter().any(|e| e["source"] == "poll"
            && e["body"]["ietf-dots-signal-channel:mitigation-scope"]["scope"][0]["status"] == 2),
        "{events:?}"
    );

    // A mitigation that does not exist yet is waited for: the watch starts with 4.04, then
    // follows mid 5 once it is created.
    let mut waiting = client_cmd(&[
        "--json",
        "watch",
        "--mid",
        "5",
        "--interval",
        "0.2",
        "--seconds",
        "60",
    ])
    .stdout(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let seen = lines_of(&mut waiting);
    let first = seen
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("the first answer");
    assert!(first.contains("\"code\":\"4.04\""), "{first}");
    let o = client(&["mitigate", "--mid", "5", "--target", "198.51.100.128/25"]);
    assert!(o.status.success(), "{}", stdout(&o));
    let followed = seen
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(&l).expect("JSON"))
        .find(|v| {
            let scope = &v["body"]["ietf-dots-signal-channel:mitigation-scope"]["scope"][0];
            scope["mid"] == 5 && scope["status"] == 2
        });
    sigterm(&waiting);
    let _ = waiting.wait();
    assert!(followed.is_some(), "the watch follows mid 5 once it exists");
    let o = client(&["withdraw", "--mid", "5"]);
    assert!(o.status.success(), "{}", stdout(&o));

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
        stdout(&o).starts_with("2.01"),
        "{}{}",
        stdout(&o),
        stderr(&o)
    );
    let o = client(&["config", "get"]);
    let out = stdout(&o);
    assert!(
        out.starts_with("2.05 Content\n")
            && out.contains("\nheartbeat-interval: mitigating 60 (")
            && out.contains("\nack-timeout: mitigating 2.50 ("),
        "{out}"
    );
    let o = client(&["config", "set", "--sid", "2", "--heartbeat-interval", "5"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(stdout(&o).starts_with("4.22"), "{}", stdout(&o));

    // A reader that goes away (`| head`): no panic, no error message.
    let mut reader_gone = client_cmd(&["status"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(reader_gone.stdout.take());
    let o = reader_gone.wait_with_output().unwrap();
    assert!(
        !stderr(&o).contains("panicked") && !stderr(&o).contains("Broken pipe"),
        "{}",
        stderr(&o)
    );
    {
        use std::os::unix::process::ExitStatusExt;
        assert!(
            o.status.success() || o.status.signal() == Some(libc::SIGPIPE),
            "{:?}",
            o.status
        );
    }

    let o = client(&["withdraw", "--mid", "1"]);
    assert_eq!(stdout(&o), "2.02 Deleted\n");
    // A value the command does not take: a usage error (2) naming the flag.
    let o = client(&[
        "mitigate",
        "--mid",
        "3",
        "--target",
        "198.51.100.7/32",
        "--lifetime",
        "0",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--lifetime"), "{}", stderr(&o));

    // The data channel: empty lists are empty lists.
    let data = |args: &[&str]| {
        let mut all = vec!["data", "--server", server.data.as_str()];
        all.extend_from_slice(args);
        client(&all)
    };
    let o = data(&["register"]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let o = data(&["alias", "list"]);
    assert_eq!((o.status.code(), stdout(&o)), (Some(0), String::new()));
    assert!(stderr(&o).contains("no aliases"), "{}", stderr(&o));
    let o = client(&["--json", "data", "--server", &server.data, "acl", "list"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "{\"ietf-dots-data-channel:acls\":{}}\n");
    let o = data(&["alias", "get", "nosuch"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).starts_with("404 "), "{}", stderr(&o));

    // The guard runs until stopped, and says so when it is.
    let mut guard = client_cmd(&[
        "guard",
        "--interface",
        "lo",
        "--threshold-pps",
        "1000000000",
        "--target",
        "198.51.100.0/24",
    ])
    .stdout(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let events = lines_of(&mut guard);
    let first = events
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("the guard connects");
    assert!(first.contains("\"event\":\"connected\""), "{first}");
    sigterm(&guard);
    let status = guard.wait().unwrap();
    let last: Vec<String> = events.iter().collect();
    assert!(status.success(), "{status:?}");
    assert!(
        last.iter()
            .any(|l| l.contains("\"event\":\"stopped\"") && l.contains("SIGTERM")),
        "{last:?}"
    );

    // The server stops on SIGTERM with a line saying so; its log, not on a terminal, has
    // no colour codes.
    sigterm(&server.child);
    assert!(server.child.wait().unwrap().success());
    let log = std::fs::read_to_string(&server.stderr).unwrap();
    assert!(log.contains("SIGTERM received: stopping"), "{log}");
    assert!(log.contains("dots-agent server stopped"), "{log}");
    assert!(!log.contains('\x1b'), "{log}");
}

/// A server that does not answer (a filtered port: packets to it vanish) or refuses: exit 4
/// with a message naming the address and both transports; --log-format json logs JSON.
#[test]
fn an_unreachable_server_is_named_with_the_wait() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let o = agent(&[
        "pki",
        "init",
        "--dir",
        d.to_str().unwrap(),
        "--server-name",
        "dots.example",
        "--client",
        "client-a",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let config = |server: &str| {
        let path = d.join(format!("client-{}.toml", server.replace([':', '.'], "-")));
        std::fs::write(
            &path,
            format!("server = \"{server}\"\nserver_name = \"dots.example\"\n[tls]\nca = \"ca.pem\"\ncert = \"client-a.pem\"\nkey = \"client-a.key\"\n"),
        )
        .unwrap();
        path.to_str().unwrap().to_string()
    };
    // Refused: nothing listens on this loopback port (UDP and TCP).
    let closed = format!("127.0.0.1:{}", free_port());
    let o = agent(&[
        "client",
        "--config",
        &config(&closed),
        "--timeout",
        "2",
        "status",
    ]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("{closed} refused DTLS")),
        "{}",
        stderr(&o)
    );

    // Filtered: in a namespace of its own, the server's address is a neighbour behind a
    // veth pair whose other end takes no frames for that MAC: nothing ever answers.
    let ns = format!("dots-cli-to-{}", std::process::id());
    struct Cleanup(String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
        }
    }
    let _cleanup = Cleanup(ns.clone());
    let ip = |args: &[&str]| {
        let o = Command::new("ip").args(args).output().expect("ip");
        assert!(o.status.success(), "ip {args:?}: {}", stderr(&o));
    };
    ip(&["netns", "add", &ns]);
    ip(&[
        "-n", &ns, "link", "add", "void0", "type", "veth", "peer", "name", "void1",
    ]);
    ip(&["-n", &ns, "addr", "add", "192.0.2.1/24", "dev", "void0"]);
    ip(&["-n", &ns, "link", "set", "void0", "up"]);
    ip(&["-n", &ns, "link", "set", "void1", "up"]);
    ip(&[
        "-n",
        &ns,
        "neigh",
        "add",
        "192.0.2.2",
        "lladdr",
        "02:00:00:00:00:02",
        "dev",
        "void0",
        "nud",
        "permanent",
    ]);
    let o = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .arg(env!("CARGO_BIN_EXE_dots-agent"))
        .args(["--log-format", "json", "client", "--config"])
        .arg(config("192.0.2.2:4646"))
        .args(["--timeout", "1", "status"])
        .output()
        .expect("nsenter");
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(4), "{err}");
    assert!(
        err.ends_with("error: no answer from 192.0.2.2:4646 over DTLS within 1 s, nor over TLS\n"),
        "{err}"
    );
    let log = err
        .lines()
        .find(|l| l.contains("trying TLS"))
        .expect("a log line");
    let v: serde_json::Value = serde_json::from_str(log).expect("a JSON log line");
    assert_eq!(v["level"], "INFO");
}
