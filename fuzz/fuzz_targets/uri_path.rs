//! The signal channel's Uri-Path parser: the input is the Uri-Path options, separated by
//! 0x00 bytes (each one decoded as the handler does, lossily as UTF-8). A path that parses
//! must name the same resource when written out again.
#![no_main]

use dots_agent::signal::uri::{self, Resource};
use libfuzzer_sys::fuzz_target;

fn written(r: &Resource) -> Vec<String> {
    let mut s = vec![".well-known".to_string(), "dots".to_string()];
    let client = |s: &mut Vec<String>, name: &str, cdid: &Option<String>, cuid: &str| {
        s.push(name.into());
        if let Some(c) = cdid {
            s.push(format!("cdid={c}"));
        }
        s.push(format!("cuid={cuid}"));
    };
    match r {
        Resource::Mitigate { cdid, cuid, mid } => {
            client(&mut s, "mitigate", cdid, cuid);
            s.extend(mid.map(|m| format!("mid={m}")));
        }
        Resource::Config { sid } => {
            s.push("config".into());
            s.extend(sid.map(|m| format!("sid={m}")));
        }
        Resource::Heartbeat => s.push("hb".into()),
        Resource::TelemetrySetup { cdid, cuid, tsid } => {
            client(&mut s, "tm-setup", cdid, cuid);
            s.extend(tsid.map(|m| format!("tsid={m}")));
        }
        Resource::Telemetry { cdid, cuid, tmid } => {
            client(&mut s, "tm", cdid, cuid);
            s.extend(tmid.map(|m| format!("tmid={m}")));
        }
    }
    s
}

fuzz_target!(|data: &[u8]| {
    let owned: Vec<String> = data
        .split(|b| *b == 0)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    let segments: Vec<&str> = owned.iter().map(String::as_str).collect();
    if let Ok(r) = uri::parse(&segments) {
        let again = written(&r);
        let again: Vec<&str> = again.iter().map(String::as_str).collect();
        assert_eq!(
            uri::parse(&again),
            Ok(r),
            "a parsed path written out parses the same"
        );
    }
});
