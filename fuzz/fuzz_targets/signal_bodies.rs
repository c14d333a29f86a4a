//! Every DOTS signal-channel body decoder on the same bytes: the CBOR reader and its
//! diagnostic rendering, mitigation requests, heartbeats, redirects, session configuration
//! (PUT and GET response), telemetry setup and pre-mitigation telemetry. What decodes must
//! survive a round trip through the matching encoder (what our client sends is what our
//! server reads).
#![no_main]

use dots_agent::signal::session_config::{self, SessionConfig};
use dots_agent::signal::{cbor, diag, message, telemetry};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    if let Ok(v) = cbor::parse(body) {
        let _ = diag::to_json(&v);
        // The reader accepts what the encoder writes back.
        let again = cbor::encode(&v);
        assert!(cbor::parse_response(&again).is_ok());
    }
    let _ = cbor::parse_response(body);

    if let Ok(scope) = message::decode_mitigation_request(body) {
        let again = message::encode_mitigation_request(&scope);
        let back = message::decode_mitigation_request(&again)
            .expect("an encoded mitigation request decodes");
        assert_eq!(back, scope, "mitigation request round trip");
    }
    if let Ok(hb) = message::decode_heartbeat(body) {
        assert_eq!(
            message::decode_heartbeat(&message::encode_heartbeat(hb)),
            Ok(hb)
        );
    }
    if let Ok(r) = message::decode_redirect(body) {
        let back = message::decode_redirect(&message::encode_redirect(&r))
            .expect("an encoded redirect decodes");
        assert_eq!(back, r, "redirect round trip");
    }

    let base = SessionConfig::default();
    if let Ok(c) = session_config::decode_put(body, &base) {
        let back = session_config::decode_response(&session_config::encode(&c))
            .expect("an encoded configuration decodes");
        assert_eq!(
            back.mitigating, c.mitigating,
            "session configuration round trip"
        );
        assert_eq!(back.idle, c.idle, "session configuration round trip");
    }
    let _ = session_config::decode_response(body);

    if let Ok(item) = telemetry::decode_setup_put(body) {
        let back = telemetry::decode_setup_put(&telemetry::encode_setup_put(&item))
            .expect("an encoded telemetry setup decodes");
        assert_eq!(back, item, "telemetry setup round trip");
    }
    let _ = telemetry::decode_pre_mitigation(body);
});
