//! `dots-agent client data ...`: the data channel (RFC 8783) from the command line:
//! registration, aliases, ACLs and capabilities. Files are JSON or TOML (by extension), either
//! the RESTCONF body itself or just its list (`[[alias]]` / `[[acl]]` in TOML). Output is a
//! table, or the server's JSON on one line with `--json`; an error status prints the
//! RESTCONF error and exits 3 (4xx) or 4 (5xx).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use serde_json::{json, Value};

use super::exit::Exit;
use crate::client::ClientConfig;
use crate::data::client::{cuid_of, request_within, HttpResponse};
use crate::data::restconf::DOTS_DATA;

#[derive(clap::Args, Debug)]
pub struct DataArgs {
    /// host:port of the server's data channel (its `[data] listen`).
    #[arg(long)]
    pub server: String,
    #[command(subcommand)]
    pub command: DataCommand,
}

#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Register this client (its cuid comes from the certificate); refreshes if registered.
    Register,
    /// Remove the registration with all aliases and ACLs.
    Unregister,
    /// What the server's filter can match and do.
    Capabilities,
    /// Aliases: named sets of targets, usable as `mitigate --alias NAME`.
    #[command(subcommand)]
    Alias(AliasCommand),
    /// ACLs: filtering rules that become XDP filter rules.
    #[command(subcommand)]
    Acl(AclCommand),
}

#[derive(Subcommand, Debug)]
pub enum AliasCommand {
    /// Create or replace the aliases in FILE (each is PUT by name: refreshes its lifetime).
    Put {
        /// JSON or TOML: the RESTCONF body, or just [[alias]] entries.
        file: PathBuf,
    },
    /// This client's aliases (none: an empty list, exit 0).
    List,
    /// One alias.
    Get {
        /// The alias's name.
        name: String,
    },
    /// Remove an alias.
    Delete {
        /// The alias's name.
        name: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum AclCommand {
    /// Create or replace the ACLs in FILE (each is PUT by name: refreshes its lifetime).
    Put {
        /// JSON or TOML: the RESTCONF body, or just [[acl]] entries.
        file: PathBuf,
        /// Where a new ACL goes among the existing ones.
        #[arg(long, value_enum, default_value = "last")]
        insert: Insert,
        /// The ACL that --insert before/after refers to.
        #[arg(long, required_if_eq_any = [("insert", "before"), ("insert", "after")])]
        point: Option<String>,
    },
    /// The ACLs with their statistics (matched packets and octets from the XDP counters);
    /// none: an empty list, exit 0.
    List,
    /// One ACL with its statistics.
    Get {
        /// The ACL's name.
        name: String,
    },
    /// Remove an ACL (its rules leave the filter).
    Delete {
        /// The ACL's name.
        name: String,
    },
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Insert {
    First,
    Last,
    Before,
    After,
}

/// Reads a JSON or TOML file as a JSON value.
fn read_document(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    if path.extension().is_some_and(|e| e == "toml") {
        let t: toml::Value = toml::from_str(&text)
            .with_context(|| format!("{} is not valid TOML", path.display()))?;
        Ok(serde_json::to_value(t)?)
    } else {
        serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
    }
}

/// The list entries of `list` ("alias" or "acl") in a document: the full RESTCONF body
/// (`{"ietf-dots-data-channel:aliases": {"alias": [...]}}`), a PUT body
/// (`{"ietf-dots-data-channel:alias": [...]}`), `{"alias": [...]}`, or a list.
fn entries(doc: Value, container: &str, list: &str) -> Result<Vec<Value>> {
    let qualified = format!("ietf-dots-data-channel:{container}");
    let single = format!("ietf-dots-data-channel:{list}");
    let inner = match doc {
        Value::Object(mut o) if o.contains_key(&qualified) => {
            o.remove(&qualified).unwrap_or_default()
        }
        // A PUT body: {"ietf-dots-data-channel:acl": [...]}.
        Value::Object(mut o) if o.contains_key(&single) => o.remove(&single).unwrap_or_default(),
        other => other,
    };
    let items = match inner {
        Value::Object(mut o) if o.contains_key(list) => o.remove(list).unwrap_or_default(),
        other => other,
    };
    match items {
        Value::Array(a) if !a.is_empty() => Ok(a),
        _ => bail!("expected a non-empty list of {list} entries ({qualified} / {list})"),
    }
}

fn name_of(entry: &Value) -> Result<String> {
    entry["name"]
        .as_str()
        .map(str::to_string)
        .context("every entry needs a name")
}

/// Percent-encodes a list key for the URI.
fn key(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub fn run(cfg: ClientConfig, json_out: bool, timeout: Duration, args: DataArgs) -> Result<Exit> {
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(run_async(cfg, json_out, timeout, args))
}

async fn run_async(
    cfg: ClientConfig,
    json_out: bool,
    timeout: Duration,
    args: DataArgs,
) -> Result<Exit> {
    let cuid = cuid_of(&cfg)?;
    let client = format!("{DOTS_DATA}/dots-client={cuid}");
    let server = args.server.as_str();
    let call = |method: &'static str, path: String, body: Option<Value>| {
        let cfg = cfg.clone();
        async move {
            let bytes = body.map(|b| serde_json::to_vec(&b)).transpose()?;
            request_within(&cfg, server, method, &path, bytes.as_deref(), timeout).await
        }
    };
    let registration = json!({"ietf-dots-data-channel:dots-client": [{"cuid": cuid}]});
    match args.command {
        DataCommand::Register => {
            let r = call("PUT", client.clone(), Some(registration)).await?;
            Ok(done(&r, json_out, &format!("registered {cuid}")))
        }
        DataCommand::Unregister => {
            let r = call("DELETE", client.clone(), None).await?;
            Ok(done(&r, json_out, &format!("unregistered {cuid}")))
        }
        DataCommand::Capabilities => {
            let r = call("GET", format!("{DOTS_DATA}/capabilities"), None).await?;
            show(&r, json_out, print_capabilities)
        }
        DataCommand::Alias(AliasCommand::Put { file }) => {
            let mut exit = Exit::Ok;
            for a in entries(read_document(&file)?, "aliases", "alias")? {
                let name = name_of(&a)?;
                let body = json!({"ietf-dots-data-channel:alias": [a]});
                let r = call(
                    "PUT",
                    format!("{client}/aliases/alias={}", key(&name)),
                    Some(body),
                )
                .await?;
                let verb = if r.status == 201 {
                    "created"
                } else {
                    "replaced"
                };
                exit = exit.max(done(&r, json_out, &format!("alias {name} {verb}")));
                if exit != Exit::Ok {
                    break;
                }
            }
            Ok(exit)
        }
        DataCommand::Alias(AliasCommand::List) => {
            let r = call("GET", format!("{client}/aliases"), None).await?;
            show(&r, json_out, |v| {
                list_or_none(
                    &v["ietf-dots-data-channel:aliases"]["alias"],
                    "aliases",
                    print_aliases,
                )
            })
        }
        DataCommand::Alias(AliasCommand::Get { name }) => {
            let r = call(
                "GET",
                format!("{client}/aliases/alias={}", key(&name)),
                None,
            )
            .await?;
            show(&r, json_out, |v| {
                print_aliases(&v["ietf-dots-data-channel:alias"])
            })
        }
        DataCommand::Alias(AliasCommand::Delete { name }) => {
            let r = call(
                "DELETE",
                format!("{client}/aliases/alias={}", key(&name)),
                None,
            )
            .await?;
            Ok(done(&r, json_out, &format!("alias {name} deleted")))
        }
        DataCommand::Acl(AclCommand::Put {
            file,
            insert,
            point,
        }) => {
            // The first ACL goes where --insert says; the others follow it in file order.
            let mut placement = (format!("{insert:?}").to_ascii_lowercase(), point);
            let mut exit = Exit::Ok;
            for a in entries(read_document(&file)?, "acls", "acl")? {
                let name = name_of(&a)?;
                let mut path = format!("{client}/acls/acl={}?insert={}", key(&name), placement.0);
                if let Some(p) = &placement.1 {
                    path.push_str(&format!(
                        "&point={}",
                        key(&format!("{client}/acls/acl={p}"))
                    ));
                }
                let body = json!({"ietf-dots-data-channel:acl": [a]});
                let r = call("PUT", path, Some(body)).await?;
                let verb = if r.status == 201 {
                    "created"
                } else {
                    "replaced"
                };
                exit = exit.max(done(&r, json_out, &format!("acl {name} {verb}")));
                if exit != Exit::Ok {
                    break;
                }
                placement = ("after".into(), Some(name));
            }
            Ok(exit)
        }
        DataCommand::Acl(AclCommand::List) => {
            let r = call("GET", format!("{client}/acls"), None).await?;
            show(&r, json_out, |v| {
                list_or_none(&v["ietf-dots-data-channel:acls"]["acl"], "ACLs", print_acls)
            })
        }
        DataCommand::Acl(AclCommand::Get { name }) => {
            let r = call("GET", format!("{client}/acls/acl={}", key(&name)), None).await?;
            show(&r, json_out, |v| {
                print_acls(&v["ietf-dots-data-channel:acls"]["acl"])
            })
        }
        DataCommand::Acl(AclCommand::Delete { name }) => {
            let r = call("DELETE", format!("{client}/acls/acl={}", key(&name)), None).await?;
            Ok(done(&r, json_out, &format!("acl {name} deleted")))
        }
    }
}

/// An error status: prints the RESTCONF error (or the body) and returns the exit status it
/// calls for (3 for 4xx, 4 for 5xx); Ok for a success.
fn fail_on_error(r: &HttpResponse, json_out: bool) -> Exit {
    let exit = Exit::for_http(r.status);
    if exit == Exit::Ok {
        return exit;
    }
    match r.json() {
        Some(v) if json_out => println!("{}", json!({"status": r.status, "body": v})),
        Some(v) => {
            let e = &v["ietf-restconf:errors"]["error"][0];
            eprintln!(
                "{} {}: {}",
                r.status,
                e["error-tag"].as_str().unwrap_or("error"),
                e["error-message"].as_str().unwrap_or("")
            );
        }
        None => eprintln!("{} {}", r.status, String::from_utf8_lossy(&r.body)),
    }
    exit
}

/// A change's outcome: "201 alias web created" (or `{"status": 201}`), or the error.
fn done(r: &HttpResponse, json_out: bool, what: &str) -> Exit {
    let exit = fail_on_error(r, json_out);
    if exit != Exit::Ok {
        return exit;
    }
    if json_out {
        println!("{}", json!({"status": r.status}));
    } else {
        println!("{} {what}", r.status);
    }
    Exit::Ok
}

/// A reading: a table (or the server's JSON on one line), or the error.
fn show(r: &HttpResponse, json_out: bool, table: impl Fn(&Value)) -> Result<Exit> {
    let exit = fail_on_error(r, json_out);
    if exit != Exit::Ok {
        return Ok(exit);
    }
    let v = r.json().context("the server's answer is not JSON")?;
    if json_out {
        println!("{v}");
    } else {
        table(&v);
    }
    Ok(Exit::Ok)
}

/// A table of a list, or "no aliases" on stderr for an empty one (stdout stays empty for
/// scripts).
fn list_or_none(list: &Value, what: &str, table: fn(&Value)) {
    if list.as_array().is_none_or(|a| a.is_empty()) {
        eprintln!("no {what}");
    } else {
        table(list);
    }
}

fn joined(v: &Value) -> String {
    match v {
        Value::Array(a) => a
            .iter()
            .map(|x| match x {
                Value::String(s) => s.clone(),
                Value::Object(o) => match (o.get("lower-port"), o.get("upper-port")) {
                    (Some(l), Some(u)) => format!("{l}-{u}"),
                    (Some(l), None) => l.to_string(),
                    _ => x.to_string(),
                },
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join(","),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn print_aliases(list: &Value) {
    println!(
        "{:<20} {:<44} {:<12} {:<8} {:>8}",
        "ALIAS", "TARGETS", "PORTS", "PROTO", "MINUTES"
    );
    for a in list.as_array().into_iter().flatten() {
        let mut targets: Vec<String> = Vec::new();
        for k in ["target-prefix", "target-fqdn", "target-uri"] {
            if let Some(x) = a.get(k) {
                targets.push(joined(x));
            }
        }
        println!(
            "{:<20} {:<44} {:<12} {:<8} {:>8}",
            a["name"].as_str().unwrap_or("?"),
            targets.join(","),
            joined(&a["target-port-range"]),
            joined(&a["target-protocol"]),
            a["pending-lifetime"]
        );
    }
}

/// One line per match container, e.g. `ipv4 src=192.0.2.0/24 dst=198.51.100.0/24`.
fn summary(matches: &Value) -> String {
    let Some(m) = matches.as_object() else {
        return "any".into();
    };
    m.iter()
        .map(|(container, fields)| {
            let f: Vec<String> = fields
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| {
                    let k = k
                        .replace("source-ipv4-network", "src")
                        .replace("destination-ipv4-network", "dst")
                        .replace("source-ipv6-network", "src")
                        .replace("destination-ipv6-network", "dst")
                        .replace("-port-range-or-operator", "-port");
                    match v {
                        Value::String(s) => format!("{k}={s}"),
                        Value::Object(o) => format!("{k}{}", port_text(o)),
                        other => format!("{k}={other}"),
                    }
                })
                .collect();
            format!("{container} {}", f.join(" "))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// A port range or operator as `=53`, `<=80`, `>=1024`, `!=7` or `=1000-2000`; other
/// objects (fragment, flags-bitmask) as their JSON.
fn port_text(o: &serde_json::Map<String, Value>) -> String {
    match (o.get("lower-port"), o.get("upper-port"), o.get("port")) {
        (Some(l), Some(u), _) => format!("={l}-{u}"),
        (_, _, Some(p)) => {
            let op = match o.get("operator").and_then(Value::as_str).unwrap_or("eq") {
                "lte" => "<=",
                "gte" => ">=",
                "neq" => "!=",
                _ => "=",
            };
            format!("{op}{p}")
        }
        _ => format!("={}", Value::Object(o.clone())),
    }
}

fn print_acls(list: &Value) {
    println!(
        "{:<20} {:<26} {:>7}  {:<16} {:<16} {:>10} {:>12}  MATCHES",
        "ACL", "ACTIVATION", "MINUTES", "ACE", "ACTION", "PACKETS", "OCTETS"
    );
    for a in list.as_array().into_iter().flatten() {
        for ace in a["aces"]["ace"].as_array().into_iter().flatten() {
            let action = match (
                ace["actions"]["forwarding"].as_str(),
                ace["actions"]["rate-limit"].as_str(),
            ) {
                (Some(f), Some(r)) => format!("{f} <={r}B/s"),
                (Some(f), None) => f.to_string(),
                _ => "-".into(),
            };
            println!(
                "{:<20} {:<26} {:>7}  {:<16} {:<16} {:>10} {:>12}  {}",
                a["name"].as_str().unwrap_or("?"),
                a["activation-type"]
                    .as_str()
                    .unwrap_or("activate-when-mitigating"),
                a["pending-lifetime"],
                ace["name"].as_str().unwrap_or("?"),
                action,
                ace["statistics"]["matched-packets"].as_str().unwrap_or("-"),
                ace["statistics"]["matched-octets"].as_str().unwrap_or("-"),
                summary(&ace["matches"])
            );
        }
    }
}

fn print_capabilities(v: &Value) {
    let c = &v["ietf-dots-data-channel:capabilities"];
    println!("address families:   {}", joined(&c["address-family"]));
    println!("forwarding actions: {}", joined(&c["forwarding-actions"]));
    println!("rate limit:         {}", c["rate-limit"]);
    println!("transport protocols: {}", joined(&c["transport-protocols"]));
    for container in ["ipv4", "ipv6", "tcp", "udp", "icmp"] {
        let fields = c[container].as_object().cloned().unwrap_or_default();
        let (yes, no): (Vec<_>, Vec<_>) =
            fields.iter().partition(|(_, v)| v.as_bool() == Some(true));
        let names = |l: Vec<(&String, &Value)>| {
            l.iter()
                .map(|(k, _)| k.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        };
        println!("{container:<5} matches: {}", names(yes));
        println!("{container:<5} cannot:  {}", names(no));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_read_in_all_three_shapes() {
        let full = json!({"ietf-dots-data-channel:acls": {"acl": [{"name": "a"}]}});
        assert_eq!(entries(full, "acls", "acl").unwrap().len(), 1);
        let bare = json!({"acl": [{"name": "a"}, {"name": "b"}]});
        assert_eq!(entries(bare, "acls", "acl").unwrap().len(), 2);
        assert_eq!(
            entries(json!([{"name": "a"}]), "acls", "acl")
                .unwrap()
                .len(),
            1
        );
        assert!(entries(json!({"alias": []}), "aliases", "alias").is_err());
    }

    #[test]
    fn toml_files_become_the_same_json() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.toml");
        std::fs::write(
            &p,
            "[[alias]]\nname = \"web\"\ntarget-prefix = [\"198.51.100.0/28\"]\ntarget-protocol = [6]\n",
        )
        .unwrap();
        let e = entries(read_document(&p).unwrap(), "aliases", "alias").unwrap();
        assert_eq!(
            e[0],
            json!({"name": "web", "target-prefix": ["198.51.100.0/28"], "target-protocol": [6]})
        );
    }

    #[test]
    fn keys_are_percent_encoded() {
        assert_eq!(key("my acl/1"), "my%20acl%2F1");
        assert_eq!(key("rule-1_a.b"), "rule-1_a.b");
    }
}
