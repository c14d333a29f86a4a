//! Operating the server and the `xdp` command line as an operator would, with the release
//! binary in a network namespace of its own (a veth pair, TEST-NET addresses only, pins in
//! a bpffs directory of the test's own): one writer per pinned filter, failed starts that
//! change nothing, operator mitigations kept by the server, reload, the store's checks.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A namespace with a veth pair (op0 up, op1 its peer), a pin root and a directory of
/// certificates (client-a), all removed on drop.
struct Site {
    ns: String,
    pins: PathBuf,
    dir: tempfile::TempDir,
    servers: Vec<Child>,
}

impl Drop for Site {
    fn drop(&mut self) {
        for s in &mut self.servers {
            let _ = s.kill();
            let _ = s.wait();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
        let _ = std::fs::remove_dir_all(&self.pins);
    }
}

impl Site {
    fn new(tag: &str) -> Site {
        let id = format!("dots-op{tag}-{}", std::process::id());
        let site = Site {
            ns: id.clone(),
            pins: PathBuf::from(format!("/sys/fs/bpf/{id}")),
            dir: tempfile::tempdir().unwrap(),
            servers: Vec::new(),
        };
        let ip = |args: &[&str]| {
            let o = Command::new("ip").args(args).output().expect("ip");
            assert!(o.status.success(), "ip {args:?}: {}", text(&o));
        };
        ip(&["netns", "add", &site.ns]);
        ip(&["-n", &site.ns, "link", "set", "lo", "up"]);
        ip(&[
            "-n", &site.ns, "link", "add", "op0", "type", "veth", "peer", "name", "op1",
        ]);
        ip(&["-n", &site.ns, "link", "set", "op0", "up"]);
        ip(&["-n", &site.ns, "link", "set", "op1", "up"]);
        let o = site.agent(&[
            "pki",
            "init",
            "--dir",
            site.path().to_str().unwrap(),
            "--server-name",
            "dots.example",
            "--server-ip",
            "127.0.0.1",
            "--client",
            "client-a",
        ]);
        assert!(o.status.success(), "{}", text(&o));
        site
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.ns))
            .arg(env!("CARGO_BIN_EXE_dots-agent"))
            .args(args);
        c
    }

    /// The agent in the namespace.
    fn agent(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("nsenter")
    }

    /// `xdp ...` on this site's pins.
    fn xdp(&self, args: &[&str]) -> Output {
        let mut all = vec!["xdp"];
        all.extend_from_slice(args);
        let state = self.path().join("cli-state");
        all.extend_from_slice(&[
            "--pin-root",
            self.pins.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
        ]);
        self.agent(&all)
    }

    /// Writes `name`.toml for a server with its store in `state`, on signal port `port`,
    /// XDP on `interfaces`; client-a gets 198.51.100.0/24, plus `extra` text.
    fn server_toml(
        &self,
        name: &str,
        state: &str,
        port: u16,
        interfaces: &str,
        extra: &str,
    ) -> PathBuf {
        let path = self.path().join(format!("{name}.toml"));
        std::fs::write(
            &path,
            format!(
                "[signal]\nlisten = [\"127.0.0.1:{port}\"]\n\
                 [tls]\nca = \"ca.pem\"\ncert = \"server.pem\"\nkey = \"server.key\"\n\
                 [store]\ndir = \"{state}\"\n\
                 [datapath]\ninterfaces = [{interfaces}]\npin_root = \"{}\"\n\
                 [[client]]\nname = \"client-a\"\nprefixes = [\"198.51.100.0/24\"]\n{extra}",
                self.pins.display()
            ),
        )
        .unwrap();
        path
    }

    /// Starts a server and waits (bounded) until its control socket exists: the last thing
    /// a start creates.
    fn start_server(&mut self, config: &Path, state: &str) {
        let log = std::fs::File::create(self.path().join(format!("{state}.log"))).unwrap();
        let child = self
            .command(&["server", "--config", config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.servers.push(child);
        let socket = self.path().join(state).join("control.sock");
        for _ in 0..200 {
            if socket.exists() {
                return;
            }
            if let Ok(Some(st)) = self.servers.last_mut().unwrap().try_wait() {
                panic!("the server exited ({st}): {}", self.log(state));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the server did not start within 10 s: {}", self.log(state));
    }

    fn log(&self, state: &str) -> String {
        std::fs::read_to_string(self.path().join(format!("{state}.log"))).unwrap_or_default()
    }

    fn client(&self, port: u16, name: &str, args: &[&str]) -> Output {
        let path = self.path().join(format!("client-{name}.toml"));
        std::fs::write(
            &path,
            format!(
                "server = \"127.0.0.1:{port}\"\nserver_name = \"dots.example\"\n\
                 [tls]\nca = \"ca.pem\"\ncert = \"{name}.pem\"\nkey = \"{name}.key\"\n"
            ),
        )
        .unwrap();
        let mut all = vec!["client", "--config", path.to_str().unwrap()];
        all.extend_from_slice(args);
        self.agent(&all)
    }

    /// Registers `name` on the data channel at 127.0.0.1:`port` with curl; the HTTP status.
    fn register(&self, name: &str, port: u16) -> String {
        let pem = std::fs::read(self.path().join(format!("{name}.pem"))).unwrap();
        let cuid = dots_agent::pki::cuid(&openssl::x509::X509::from_pem(&pem).unwrap()).unwrap();
        let d = self.path();
        let o = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.ns))
            .args([
                "curl",
                "-sS",
                "--max-time",
                "10",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
            ])
            .args(["-H", "Content-Type: application/yang-data+json", "--data"])
            .arg(format!(
                "{{\"ietf-dots-data-channel:dots-client\":[{{\"cuid\":\"{cuid}\"}}]}}"
            ))
            .arg("--cacert")
            .arg(d.join("ca.pem"))
            .arg("--cert")
            .arg(d.join(format!("{name}.pem")))
            .arg("--key")
            .arg(d.join(format!("{name}.key")))
            .args(["--resolve", &format!("dots.example:{port}:127.0.0.1")])
            .arg(format!(
                "https://dots.example:{port}/restconf/data/ietf-dots-data-channel:dots-data"
            ))
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).to_string()
    }

    fn status(&self) -> serde_json::Value {
        let o = self.xdp(&["status", "--interval", "0", "--json"]);
        assert!(o.status.success(), "{}", text(&o));
        serde_json::from_slice(&o.stdout).expect("status JSON")
    }
}

fn owners(status: &serde_json::Value) -> Vec<String> {
    status["mitigations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["owner"].as_str().unwrap().to_string())
        .collect()
}

const OPERATOR_FILE: &str = "[[mitigation]]\nid = 7\ntargets = [\"203.0.113.0/24\"]\n";

#[test]
fn one_writer_operator_mitigations_through_the_server_and_reload() {
    let mut site = Site::new("w");
    let data = "[data]\nlisten = [\"127.0.0.1:4650\"]\n";
    let config = site.server_toml("one", "state-one", 4646, "\"op0\"", data);
    site.start_server(&config, "state-one");
    let o = site.client(
        4646,
        "client-a",
        &["mitigate", "--mid", "3", "--target", "198.51.100.7/32"],
    );
    assert!(text(&o).starts_with("2.01"), "{}", text(&o));

    // 14.3: an operator mitigation goes through the server and into its store.
    let file = site.path().join("operator.toml");
    std::fs::write(&file, OPERATOR_FILE).unwrap();
    let o = site.xdp(&["mitigation", "add", file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("through the server"), "{}", text(&o));

    // 14.8: status names each mitigation by its owner.
    let mut names = owners(&site.status());
    names.sort();
    assert_eq!(names, ["client-a mid 3", "operator mitigation 7"]);

    // 14.1: a second server on the same pins (another store, another port) is refused,
    // names the holder, and changes nothing.
    let pid = site.servers[0].id().to_string();
    let second = site.server_toml("two", "state-two", 4647, "\"op0\"", "");
    let o = site.agent(&["server", "--config", second.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains(&format!("in use by PID {pid}")),
        "{}",
        text(&o)
    );
    assert!(
        !site.path().join("state-two").exists(),
        "no store was created"
    );
    let mut after = owners(&site.status());
    after.sort();
    assert_eq!(after, names, "the first server's mitigations are all there");
    // ... and so is a direct change of the interfaces.
    let o = site.xdp(&["attach", "-i", "op1"]);
    assert!(
        !o.status.success() && text(&o).contains(&format!("PID {pid}")),
        "{}",
        text(&o)
    );
    let o = site.xdp(&["detach", "--all"]);
    assert!(
        !o.status.success() && text(&o).contains(&format!("PID {pid}")),
        "{}",
        text(&o)
    );
    assert_eq!(site.status()["interfaces"][0]["name"], "op0");

    // 14.19: a new client's certificate from the existing CA, then a reload. Until the
    // reload client-b is refused.
    let o = site.agent(&[
        "pki",
        "add-client",
        "--dir",
        site.path().to_str().unwrap(),
        "--client",
        "client-b",
    ]);
    assert!(
        o.status.success() && text(&o).contains("client client-b: cuid "),
        "{}",
        text(&o)
    );
    let o = site.client(
        4646,
        "client-b",
        &["mitigate", "--mid", "1", "--target", "192.0.2.0/28"],
    );
    assert!(!text(&o).starts_with("2.01"), "{}", text(&o));
    assert_eq!(site.register("client-b", 4650), "403", "not configured yet");
    let with_b = format!("{data}[[client]]\nname = \"client-b\"\nprefixes = [\"192.0.2.0/24\"]\n");
    site.server_toml("one", "state-one", 4646, "\"op0\"", &with_b);
    let o = site.agent(&["server", "reload", "--config", config.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("clients added client-b"), "{}", text(&o));
    let o = site.client(
        4646,
        "client-b",
        &["mitigate", "--mid", "1", "--target", "192.0.2.0/28"],
    );
    assert!(text(&o).starts_with("2.01"), "{}", text(&o));
    // A file that does not load is refused; the running configuration stays.
    std::fs::write(&config, "[signal\n").unwrap();
    let o = site.agent(&["server", "reload", "--config", config.to_str().unwrap()]);
    assert!(!o.status.success(), "{}", text(&o));
    let kill = |sig: &str| {
        let o = Command::new("kill").args([sig, &pid]).output().unwrap();
        assert!(o.status.success());
    };
    kill("-HUP");
    let mut refused = false;
    for _ in 0..100 {
        refused = site.log("state-one").contains("reload refused");
        if refused {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(refused, "{}", site.log("state-one"));
    let o = site.client(
        4646,
        "client-b",
        &["mitigate", "--mid", "2", "--target", "192.0.2.16/28"],
    );
    assert!(
        text(&o).starts_with("2.01"),
        "client-b is still configured: {}",
        text(&o)
    );

    // A restart restores the operator mitigation from the store.
    site.server_toml("one", "state-one", 4646, "\"op0\"", &with_b);
    kill("-TERM");
    let _ = site.servers[0].wait();
    site.start_server(&config, "state-one");
    let mut names = owners(&site.status());
    names.sort();
    assert_eq!(
        names,
        [
            "client-a mid 3",
            "client-b mid 1",
            "client-b mid 2",
            "operator mitigation 7"
        ]
    );
    let o = site.xdp(&["mitigation", "remove", "7"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = site.agent(&[
        "store",
        "check",
        "--dir",
        site.path().join("state-one").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("3 mitigation(s) of 2 client(s), 0 operator mitigation(s)"),
        "{}",
        text(&o)
    );

    // 13.2: with the store gone, a start would empty the pinned filter: refused instead.
    let pid = site.servers[1].id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let _ = site.servers[1].wait();
    std::fs::rename(site.path().join("state-one"), site.path().join("moved")).unwrap();
    let o = site.agent(&["server", "--config", config.to_str().unwrap()]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("starting with an empty store would remove them"),
        "{}",
        text(&o)
    );
    assert_eq!(
        owners(&site.status()).len(),
        3,
        "the filter kept every mitigation"
    );
}

#[test]
fn a_failed_start_changes_nothing() {
    let site = Site::new("f");
    // A key that does not belong to the certificate.
    let config = site.server_toml("bad-key", "state", 4646, "\"op0\"", "");
    let t = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        t.replace("key = \"server.key\"", "key = \"client-a.key\""),
    )
    .unwrap();
    for args in [vec!["server", "--check"], vec!["server"]] {
        let mut all = args.clone();
        all.extend_from_slice(&["--config", config.to_str().unwrap()]);
        let o = site.agent(&all);
        assert!(!o.status.success());
        assert!(
            text(&o).contains("does not belong to the certificate"),
            "{}",
            text(&o)
        );
        assert!(
            !text(&o).contains("error:0"),
            "no raw OpenSSL text: {}",
            text(&o)
        );
        assert!(!site.pins.exists(), "nothing pinned");
        assert!(!site.path().join("state").exists(), "no store created");
    }
    // An interface that does not exist: named, nothing attached.
    let config = site.server_toml("nosuch", "state", 4646, "\"op0\", \"nosuch0\"", "");
    let o = site.agent(&["server", "--config", config.to_str().unwrap()]);
    assert!(
        !o.status.success() && text(&o).contains("nosuch0"),
        "{}",
        text(&o)
    );
    assert!(!site.pins.exists() && !site.path().join("state").exists());
    // A good configuration passes --check, which changes nothing either.
    let config = site.server_toml("ok", "state", 4646, "\"op0\"", "");
    let o = site.agent(&["server", "--check", "--config", config.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains(": ok ("), "{}", text(&o));
    assert!(
        !site.pins.exists() && !site.path().join("state").exists(),
        "--check changes nothing"
    );
}

#[test]
fn the_store_is_checked_before_a_start_and_backed_up_while_running() {
    let mut site = Site::new("s");
    let config = site.server_toml("ctl", "state", 4646, "", "");
    let state = site.path().join("state");
    // A zero-length store file is not an empty store.
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("dots-agent.sqlite"), b"").unwrap();
    let o = site.agent(&["server", "--config", config.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("is empty (0 bytes)") && text(&o).contains("--reset-store"),
        "{}",
        text(&o)
    );
    let o = site.agent(&["store", "check", "--dir", state.to_str().unwrap()]);
    assert!(
        !o.status.success() && text(&o).contains("0 bytes"),
        "{}",
        text(&o)
    );
    // Not a database at all.
    std::fs::write(
        state.join("dots-agent.sqlite"),
        b"not a database, just text\n",
    )
    .unwrap();
    let o = site.agent(&["server", "--check", "--config", config.to_str().unwrap()]);
    assert!(
        !o.status.success() && text(&o).contains("restore a backup"),
        "{}",
        text(&o)
    );
    // --reset-store sets it aside and starts empty.
    let mut c = site.command(&[
        "server",
        "--reset-store",
        "--config",
        config.to_str().unwrap(),
    ]);
    let child = c
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    site.servers.push(child);
    for _ in 0..200 {
        if state.join("control.sock").exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let aside = std::fs::read_dir(&state)
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| e.file_name().to_string_lossy().contains(".bad-"));
    assert!(aside, "the bad file was set aside");
    let o = site.client(
        4646,
        "client-a",
        &["mitigate", "--mid", "1", "--target", "198.51.100.0/28"],
    );
    assert!(text(&o).starts_with("2.01"), "{}", text(&o));
    // A backup while the server runs, then a check of the copy.
    let copy = site.path().join("backup.sqlite");
    let o = site.agent(&[
        "store",
        "backup",
        "--config",
        config.to_str().unwrap(),
        "--to",
        copy.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("1 mitigation(s) of 1 client(s)"),
        "{}",
        text(&o)
    );
    let o = site.agent(&[
        "store",
        "backup",
        "--dir",
        state.to_str().unwrap(),
        "--to",
        copy.to_str().unwrap(),
    ]);
    assert!(
        !o.status.success() && text(&o).contains("exists"),
        "{}",
        text(&o)
    );
    // A second server on the same store is refused, naming the first.
    let pid = site.servers[0].id().to_string();
    let other = site.server_toml("ctl2", "state", 4647, "", "");
    let o = site.agent(&["server", "--config", other.to_str().unwrap()]);
    assert!(
        !o.status.success() && text(&o).contains(&format!("PID {pid}")),
        "{}",
        text(&o)
    );
    let _ = site.servers[0].kill();
    let _ = site.servers[0].wait();

    // A row that does not decode stops the start; nothing is skipped.
    let db = rusqlite::Connection::open(state.join("dots-agent.sqlite")).unwrap();
    db.execute("UPDATE mitigation SET doc = '{\"broken\": true}'", [])
        .unwrap();
    drop(db);
    let o = site.agent(&["server", "--config", config.to_str().unwrap()]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("cannot be read") && text(&o).contains("mitigation 1 of"),
        "{}",
        text(&o)
    );
    let o = site.agent(&["store", "check", "--dir", state.to_str().unwrap()]);
    assert!(
        !o.status.success() && text(&o).contains("cannot be read"),
        "{}",
        text(&o)
    );
    // The backup is good: restored by copying it back.
    std::fs::copy(&copy, state.join("dots-agent.sqlite")).unwrap();
    for f in ["dots-agent.sqlite-wal", "dots-agent.sqlite-shm"] {
        let _ = std::fs::remove_file(state.join(f));
    }
    let o = site.agent(&["store", "check", "--dir", state.to_str().unwrap()]);
    assert!(
        o.status.success() && text(&o).contains("1 mitigation(s)"),
        "{}",
        text(&o)
    );
}

#[test]
fn xdp_commands_say_what_happened_and_attach_is_all_or_nothing() {
    let site = Site::new("x");
    let o = site.xdp(&["detach", "--all"]);
    assert!(
        o.status.success() && text(&o).contains("not attached to any interface"),
        "{}",
        text(&o)
    );
    let o = site.xdp(&["detach", "--all", "--purge"]);
    assert!(text(&o).contains("nothing pinned"), "{}", text(&o));
    // 14.5: one interface that does not exist: nothing attached, nothing pinned.
    let o = site.xdp(&["attach", "-i", "op0", "-i", "nosuch0"]);
    assert!(
        !o.status.success() && text(&o).contains("nosuch0"),
        "{}",
        text(&o)
    );
    assert!(!site.pins.exists(), "nothing pinned");
    let o = site.xdp(&["attach", "-i", "op0", "--mode", "skb"]);
    assert!(o.status.success(), "{}", text(&o));
    // 14.7: a mode change over an existing attachment says it was not applied.
    let o = site.xdp(&["attach", "-i", "op0", "--mode", "native"]);
    assert!(text(&o).contains("not applied"), "{}", text(&o));
    // 14.4: `ip netns exec` would lose the pins: refused with the way out.
    let o = Command::new("ip")
        .args([
            "netns",
            "exec",
            &site.ns,
            env!("CARGO_BIN_EXE_dots-agent"),
            "xdp",
            "attach",
            "-i",
            "op1",
        ])
        .args(["--pin-root", site.pins.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        !o.status.success() && text(&o).contains("nsenter --net"),
        "{}",
        text(&o)
    );
    let o = site.xdp(&["detach", "--all", "--purge"]);
    assert!(
        o.status.success() && text(&o).contains("op0: detached"),
        "{}",
        text(&o)
    );
}

#[test]
fn the_shipped_server_and_client_examples_work_together() {
    let mut site = Site::new("e");
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
    let pki = site.path().join("pki");
    let o = site.agent(&[
        "pki",
        "init",
        "--dir",
        pki.to_str().unwrap(),
        "--server-name",
        "dots.example",
        "--server-ip",
        "127.0.0.1",
        "--client",
        "client-a",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    // As shipped, but the store in the test's directory instead of /var/lib/dots-agent.
    let server = std::fs::read_to_string(format!("{examples}/server.toml")).unwrap();
    assert!(server.contains("dir = \"/var/lib/dots-agent\""));
    let config = site.path().join("server.toml");
    std::fs::write(
        &config,
        server.replace("dir = \"/var/lib/dots-agent\"", "dir = \"state\""),
    )
    .unwrap();
    std::fs::copy(
        format!("{examples}/client.toml"),
        site.path().join("client.toml"),
    )
    .unwrap();
    let o = site.agent(&["server", "--check", "--config", config.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    site.start_server(&config, "state");
    let client = site.path().join("client.toml");
    let o = site.agent(&[
        "client",
        "--config",
        client.to_str().unwrap(),
        "mitigate",
        "--mid",
        "1",
        "--target",
        "198.51.100.0/24",
    ]);
    assert!(text(&o).starts_with("2.01"), "{}", text(&o));
}

#[test]
fn install_puts_binary_and_unit_in_place_once() {
    let root = tempfile::tempdir().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/install.sh");
    let run = || {
        Command::new(script)
            .env("ROOT", root.path())
            .env("BIN", env!("CARGO_BIN_EXE_dots-agent"))
            .output()
            .unwrap()
    };
    let o = run();
    assert!(o.status.success(), "{}", text(&o));
    for f in [
        "usr/local/bin/dots-agent",
        "etc/systemd/system/dots-agent.service",
        "etc/dots-agent/server.toml",
    ] {
        assert!(root.path().join(f).is_file(), "{f}");
    }
    assert!(root.path().join("var/lib/dots-agent").is_dir());
    let o = run();
    assert!(
        o.status.success() && text(&o).contains("nothing to do"),
        "{}",
        text(&o)
    );
}
