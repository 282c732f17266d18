//! Namespaces: a room name's part before its first `:` (`chat:lobby` is in
//! `chat`) picks the options its rooms run with, from the settings file's
//! `[namespaces.<name>]` tables; a room without a namespace, or in one the
//! file does not name, runs with the global settings.

use crate::settings::SettingsError;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// Namespaces a settings file may name.
pub const MAX_NAMESPACES: usize = 1000;

/// Longest namespace name, in bytes (a room name is at most 64).
pub const MAX_NAMESPACE_BYTES: usize = 32;

/// One `[namespaces.<name>]` table: each option left out is the global
/// setting's.
#[derive(Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NamespaceSettings {
    /// Messages kept per room (0: no history); global `history_size`.
    pub history_size: Option<u64>,
    /// How long a room's seq and history outlive its last message; global
    /// `room_ttl`.
    #[serde(default, with = "humantime_serde")]
    pub history_ttl: Option<Duration>,
    /// Members see who is in the room (`joined`'s list, presence events,
    /// the presence API); default true.
    pub presence: Option<bool>,
    /// Clients may publish; false: only the server API publishes here.
    /// Default true.
    pub client_publish: Option<bool>,
    /// Ask the backend's join hook (`proxy_join_url`) before each client
    /// join; default false.
    pub join_proxy: Option<bool>,
    /// Ask the backend's publish hook (`proxy_publish_url`) before each
    /// client publish; default false.
    pub publish_proxy: Option<bool>,
}

/// What one room runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomOptions {
    pub history_size: u64,
    pub room_ttl: Duration,
    pub presence: bool,
    pub client_publish: bool,
    pub join_proxy: bool,
    pub publish_proxy: bool,
}

/// Every namespace's options, and the global ones for the rest.
#[derive(Debug, Clone)]
pub struct Namespaces {
    global: RoomOptions,
    named: HashMap<String, RoomOptions>,
}

impl Namespaces {
    /// The global options only (no namespaces configured).
    pub fn global(global: RoomOptions) -> Self {
        Namespaces {
            global,
            named: HashMap::new(),
        }
    }

    /// The options of every configured namespace, over `global`. The
    /// settings must have passed [`validate`].
    pub fn new(global: RoomOptions, settings: &BTreeMap<String, NamespaceSettings>) -> Self {
        let named = settings
            .iter()
            .map(|(name, s)| {
                let o = RoomOptions {
                    history_size: s.history_size.unwrap_or(global.history_size),
                    room_ttl: s.history_ttl.unwrap_or(global.room_ttl),
                    presence: s.presence.unwrap_or(global.presence),
                    client_publish: s.client_publish.unwrap_or(global.client_publish),
                    join_proxy: s.join_proxy.unwrap_or(global.join_proxy),
                    publish_proxy: s.publish_proxy.unwrap_or(global.publish_proxy),
                };
                (name.clone(), o)
            })
            .collect();
        Namespaces { global, named }
    }

    /// The options `room` runs with.
    pub fn of(&self, room: &str) -> &RoomOptions {
        namespace_of(room)
            .and_then(|ns| self.named.get(ns))
            .unwrap_or(&self.global)
    }

    /// The global options.
    pub fn global_options(&self) -> &RoomOptions {
        &self.global
    }
}

/// The namespace of `room`: the part before its first `:`, if any.
pub fn namespace_of(room: &str) -> Option<&str> {
    room.split_once(':').map(|(ns, _)| ns)
}

/// Checks the `namespaces` setting: names a room can start with, a bounded
/// count, and usable values. Errors name the key, e.g.
/// `namespaces.chat.history_ttl`.
pub fn validate(settings: &BTreeMap<String, NamespaceSettings>) -> Result<(), SettingsError> {
    if settings.len() > MAX_NAMESPACES {
        return Err(SettingsError::invalid(
            "namespaces",
            format!("{} namespaces; at most {MAX_NAMESPACES}", settings.len()),
        ));
    }
    for (name, s) in settings {
        let key = |k: &str| format!("namespaces.{name}.{k}");
        let name_ok = !name.is_empty()
            && name.len() <= MAX_NAMESPACE_BYTES
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'));
        if !name_ok {
            return Err(SettingsError::invalid(
                &format!("namespaces.{name}"),
                format!(
                    "a namespace is the start of a room name before its first `:`: 1 to \
                     {MAX_NAMESPACE_BYTES} bytes of [A-Za-z0-9-_.@]"
                ),
            ));
        }
        if s.history_ttl.is_some_and(|t| t < Duration::from_secs(1)) {
            return Err(SettingsError::invalid(
                &key("history_ttl"),
                "must be at least 1s",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn global() -> RoomOptions {
        RoomOptions {
            history_size: 100,
            room_ttl: Duration::from_secs(3600),
            presence: true,
            client_publish: true,
            join_proxy: false,
            publish_proxy: false,
        }
    }

    fn parse(toml: &str) -> Result<BTreeMap<String, NamespaceSettings>, String> {
        #[derive(Deserialize)]
        struct F {
            namespaces: BTreeMap<String, NamespaceSettings>,
        }
        toml::from_str::<F>(toml)
            .map(|f| f.namespaces)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_room_runs_with_its_namespace_or_the_global_options() {
        let s = parse(
            "[namespaces.chat]\nhistory_size = 5\nhistory_ttl = \"10m\"\npresence = false\n\
             [namespaces.news]\nclient_publish = false\n",
        )
        .unwrap();
        validate(&s).unwrap();
        let ns = Namespaces::new(global(), &s);
        let chat = ns.of("chat:lobby");
        assert_eq!(chat.history_size, 5);
        assert_eq!(chat.room_ttl, Duration::from_secs(600));
        assert!(!chat.presence && chat.client_publish);
        let news = ns.of("news:today");
        assert_eq!(news.history_size, 100, "left out: the global value");
        assert!(news.presence && !news.client_publish);
        // Only the part before the first `:` names it, whole.
        assert_eq!(ns.of("chat"), &global());
        assert_eq!(ns.of("chatter:x"), &global());
        assert_eq!(ns.of("lobby:chat:x"), &global());
        assert!(!ns.of("news:a:b").client_publish);
    }

    #[test]
    fn bad_namespaces_are_refused_by_key() {
        let e = parse("[namespaces.chat]\nhistory_sise = 5\n").unwrap_err();
        assert!(e.contains("history_sise"), "{e}");
        let e = parse("[namespaces.chat]\nhistory_ttl = \"soon\"\n").unwrap_err();
        assert!(e.contains("history_ttl"), "{e}");
        let e = validate(&parse("[namespaces.\"a:b\"]\n").unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("namespaces.a:b"), "{e}");
        let e = validate(&parse("[namespaces.chat]\nhistory_ttl = \"10ms\"\n").unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("namespaces.chat.history_ttl"), "{e}");
        let many: BTreeMap<_, _> = (0..=MAX_NAMESPACES)
            .map(|i| (format!("n{i}"), NamespaceSettings::default()))
            .collect();
        assert!(validate(&many).is_err());
    }
}
