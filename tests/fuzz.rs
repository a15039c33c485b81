//! Property tests ("fuzzing on stable") of everything that reads untrusted input without a
//! server around it: the native frame decoder, the Engine.IO / Socket.IO packet decoders, the
//! validators of the domain types and the configuration. Every input must be answered (a value
//! or a documented error), never a panic, and what is accepted must keep the type's promise.
//!
//! Bounded: each property runs a fixed number of cases (`CASES`, or `PROPTEST_CASES` to run
//! longer locally). Inputs that once failed are kept in `tests/proptest-regressions/` and
//! replayed first on every run; `CORPUS` holds hand-picked hard cases.

use confab::{
    config::Config,
    domain::{ClientId, Content, Email, RoomName, is_invisible},
    protocol::{native, socketio},
};
use proptest::prelude::*;

/// Cases per property in CI: a few seconds in all on a debug build.
const CASES: u32 = 2_000;

/// Inputs worth trying every time: edges of the formats and things that once looked risky.
const CORPUS: &[&str] = &[
    "",
    "{}",
    "[]",
    "null",
    "\"",
    "{\"type\":\"send_message\"}",
    "{\"type\":\"send_message\",\"room\":\"general\",\"content\":\"hi\",\"ref\":null}",
    "{\"type\":\"join_room\",\"room\":\"general\",\"since\":-1}",
    "{\"type\":\"join_room\",\"room\":\"general\",\"since\":1e400}",
    "{\"type\":\"join_room\",\"room\":\"general\",\"since\":9223372036854775808}",
    "{\"type\":\"auth\",\"token\":\"\"}",
    "{\"type\":\"ping\",\"ref\":\"ééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééé\"}",
    "{\"type\":\"__proto__\"}",
    "42",
    "42[",
    "42[\"send_message\"]",
    "42[\"send_message\",{\"room\":\"general\",\"content\":\"hi\",\"clientId\":7}]",
    "4299999999999999999999999[\"ping\"]",
    "42/admin,1[\"ping\"]",
    "451-[\"x\",{\"_placeholder\":true,\"num\":0}]",
    "45999999999999999999-[\"x\"]",
    "40{\"token\":",
    "4\u{0}",
    "4é",
    "2probe",
    "\u{feff}{}",
];

/// [`CASES`] per property (`PROPTEST_CASES` runs longer by hand); failures are saved to
/// `tests/proptest-regressions/` and replayed first on every run.
fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(CASES);
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..ProptestConfig::default()
    }
}

/// Text shaped like the protocols: mostly JSON punctuation, keys and digits, some anything.
fn frame_like() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[\\[\\]{}\":,0-9a-z_ .\\-/\\\\]{0,120}",
        2 => (0..CORPUS.len(), any::<String>(), 0usize..64).prop_map(|(i, noise, at)| {
            // A corpus entry with noise spliced in at a character boundary.
            let base = CORPUS[i];
            let at = base.char_indices().map(|(i, _)| i).nth(at).unwrap_or(base.len());
            format!("{}{noise}{}", &base[..at], &base[at..])
        }),
        1 => any::<String>(),
        1 => "(4[0-6])?[0-9]{0,25}(/[a-z]{0,5},)?[0-9]{0,25}-?\\[.{0,40}\\]",
    ]
}

/// The native decoder's answer keeps its promises: an error says why, and a `ref` echoed in
/// either answer is at most 64 characters.
fn check_native(text: &str) {
    match native::decode(text) {
        Ok((_, tag)) => {
            assert!(tag.cmd_ref.as_ref().is_none_or(|r| r.chars().count() <= 64), "{text:?}: long ref accepted");
        }
        Err(e) => {
            assert!(!e.message.is_empty(), "{text:?}: an error without a reason");
            assert!(e.cmd_ref.as_ref().is_none_or(|r| r.len() <= 64), "{text:?}: long ref echoed");
        }
    }
}

fn check_socketio(text: &str) {
    if let socketio::Packet::Event { data, ack_id, .. } = socketio::parse(text) {
        match socketio::decode_event(data, ack_id) {
            Ok((_, tag)) | Err(socketio::DecodeError { tag, .. }) => {
                assert!(tag.cmd_ref.as_ref().is_none_or(|r| r.chars().count() <= 64), "{text:?}: long ref");
                assert_eq!(tag.ack_id, ack_id, "{text:?}: the ack id is kept");
            }
        }
    }
    // Any payload at all, as an event's data.
    if let Err(e) = socketio::decode_event(text, Some(1)) {
        assert!(!e.message.is_empty(), "{text:?}: an error without a reason");
    }
}

#[test]
fn the_corpus_is_answered_without_a_panic() {
    for text in CORPUS {
        check_native(text);
        check_socketio(text);
        let _ = Email::parse(text);
        let _ = RoomName::parse(text);
        let _ = Content::parse(text, 2000);
        let _ = ClientId::parse(text);
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn native_frames_are_answered_never_panicked_on(text in frame_like()) {
        check_native(&text);
    }

    #[test]
    fn socket_io_packets_are_answered_never_panicked_on(text in frame_like()) {
        check_socketio(&text);
    }

    #[test]
    fn accepted_room_names_follow_the_rule(raw in prop_oneof!["[A-Za-z0-9:_\\- ]{0,70}", any::<String>()]) {
        if let Ok(room) = RoomName::parse(&raw) {
            let name = room.as_str();
            prop_assert!((1..=64).contains(&name.chars().count()), "{name:?}");
            prop_assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '-')), "{name:?}");
        }
    }

    #[test]
    fn accepted_emails_are_canonical_and_visible(raw in prop_oneof![
        "[a-zA-Z0-9.+_\\-]{1,20}@[a-z0-9\\-]{1,10}\\.[a-z]{2,4}",
        "[\\PC]{0,12}@[\\PC]{0,12}\\.[a-z]{2}",
        any::<String>(),
    ]) {
        if let Ok(email) = Email::parse(&raw) {
            let s = email.as_str();
            prop_assert!(s.len() <= 254 && s.contains('@'), "{s:?}");
            prop_assert!(!s.chars().any(|c| c.is_whitespace() || c.is_control() || is_invisible(c)), "{s:?}");
            // Canonical: parsing the stored form gives the stored form.
            prop_assert_eq!(Email::parse(s).map(Email::into_string).ok(), Some(s.to_owned()));
        }
    }

    #[test]
    fn accepted_content_is_trimmed_and_within_the_limit(raw in any::<String>(), max in 1usize..50) {
        if let Ok(content) = Content::parse(&raw, max) {
            let s = content.into_string();
            prop_assert!(!s.is_empty() && s.chars().count() <= max, "{s:?}");
            prop_assert_eq!(s.trim(), s.as_str());
        }
    }

    #[test]
    fn accepted_client_ids_are_1_to_64_characters(raw in any::<String>()) {
        if let Ok(id) = ClientId::parse(&raw) {
            prop_assert!((1..=64).contains(&id.as_str().chars().count()));
        }
    }

    /// Configuration files with known keys and arbitrary values: a value is accepted, or the
    /// error names what is wrong; validation never panics.
    #[test]
    fn config_files_are_accepted_or_refused_with_a_reason(
        key in prop::sample::select(vec![
            "listen", "metrics_listen", "log_level", "database.max_connections", "auth.access_token_ttl",
            "auth.revocation_check_interval", "auth.argon2.memory_kib", "http.cors_origins", "http.body_limit",
            "chat.message_max_len", "chat.max_rooms_per_session", "limits.messages_per_second",
            "limits.join_burst", "ws.max_frame", "ws.ping_interval", "ws.idle_timeout",
            "ws.max_sessions_per_user", "shutdown.grace", "nonsense.key",
        ]),
        value in prop_oneof![
            "-?[0-9]{1,20}", "\"[0-9a-z. :/*]{0,20}\"", Just("true".to_owned()), Just("[]".to_owned()),
            Just("[\"*\"]".to_owned()), Just("1e400".to_owned()), "\"[0-9]{1,6}(ms|s|m|h|d)\"",
        ],
    ) {
        let (section, leaf) = key.rsplit_once('.').map_or(("", key), |(s, l)| (s, l));
        let toml = if section.is_empty() { format!("{leaf} = {value}\n") } else { format!("[{section}]\n{leaf} = {value}\n") };
        match toml::from_str::<Config>(&toml) {
            Ok(config) => {
                if let Err(e) = config.validate() {
                    prop_assert!(e.to_string().contains('`'), "{toml}: {e} names no key");
                }
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }
}
