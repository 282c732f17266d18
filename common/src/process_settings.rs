//! The settings several processes share, declared once.
//!
//! Each process's `Settings` is made by [`process_settings!`]: it lists
//! its own keys, with their defaults, and names the groups of shared keys
//! it takes. A shared key then has one type, one default and one check
//! for the whole cluster, which reads one settings file.
//!
//! serde's `flatten` would say the same with nested structs, but it cannot
//! go with `deny_unknown_fields`, nor with the key introspection that turns
//! a typo in a shared file into an error naming the key
//! ([`crate::settings::assert_keys_listed`]); a macro keeps the struct flat.
//!
//! | group | keys | processes |
//! | --- | --- | --- |
//! | (always) | `strategy`, `redis_url`, `redis_ca_file`, `redis_cluster`, `listen`, `node_id`, `internal_token`, `insecure`, `handshake_timeout`, `http_idle_timeout`, `http2_keepalive`, `otlp_endpoint`, `otlp_sample_ratio` | all |
//! | `jwt` | `jwt_secret`, `jwt_public_key`, `jwt_audience`, `jwt_issuer` | gateway, ws-node |
//! | `per_ip` | `max_connections_per_ip`, `max_connect_rate_per_ip`, `max_connect_burst_per_ip` | gateway, ws-node |
//! | `bus` | `bus_buffer`, `bus_buffer_bytes` | gateway, ws-node |
//! | `namespaces` | `[namespaces.<name>]` tables | gateway, ws-node |
//!
//! The process writes its own checks in `fn validate_own(&self)`; the
//! generated `Validate` runs the shared checks first, then those. The
//! generated code names `clap`, `serde`, `humantime_serde` and
//! `turnout_proto`: a crate that uses the macro depends on them (every
//! turnout process does).

/// Declares a process's `Settings`: the keys every process has, the
/// shared groups it names, and its own keys (`pub key: Type = default`,
/// each with its attributes). Generates the struct (flat, unknown keys
/// refused, every key defaulted), `Default`, `Validate` (shared checks,
/// then the process's `validate_own`), `serve_limits`, `from_args` (from
/// the named `Cli`), `jwt` with the `jwt` group, and `Served`.
#[macro_export]
macro_rules! process_settings {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            cli: $cli:ty;
            listen: $listen:expr;
            shared: [$($group:ident),* $(,)?];
            $(
                $(#[$fmeta:meta])*
                pub $field:ident : $fty:ty = $fdefault:expr
            ),* $(,)?
        }
    ) => {
        $crate::process_settings!(@munch
            [$($group)*]
            meta [$(#[$meta])*] name [$name] cli [$cli]
            fields [
                $(
                    $(#[$fmeta])*
                    pub $field: $fty,
                )*
                /// The placement strategy (one for the whole cluster).
                pub strategy: turnout_proto::Strategy,
                /// `redis://` or `rediss://` URL (several, comma-separated, with `redis_cluster`).
                pub redis_url: String,
                /// CA certificate (PEM) for `rediss://` URLs.
                pub redis_ca_file: Option<std::path::PathBuf>,
                /// Whether `redis_url` names Redis Cluster nodes.
                pub redis_cluster: bool,
                /// Address (or port range) to listen on.
                pub listen: $crate::settings::ListenSpec,
                /// This process's id (default: from the host name).
                pub node_id: Option<String>,
                /// Token internal gRPC calls carry.
                pub internal_token: Option<String>,
                /// Run without tokens where they would be required.
                pub insecure: bool,
                #[serde(with = "humantime_serde")]
                pub handshake_timeout: std::time::Duration,
                #[serde(with = "humantime_serde")]
                pub http_idle_timeout: std::time::Duration,
                #[serde(with = "humantime_serde")]
                pub http2_keepalive: std::time::Duration,
                /// OTLP/HTTP collector for traces (None: tracing off).
                pub otlp_endpoint: Option<String>,
                /// Share of the traces this process starts that are kept.
                pub otlp_sample_ratio: f64,
            ]
            defaults [
                $($field: $fdefault,)*
                strategy: turnout_proto::Strategy::Pubsub,
                redis_url: "redis://127.0.0.1:6379".into(),
                redis_ca_file: None,
                redis_cluster: false,
                listen: $listen.parse().expect("valid default"),
                node_id: None,
                internal_token: None,
                insecure: false,
                handshake_timeout: std::time::Duration::from_secs(10),
                http_idle_timeout: std::time::Duration::from_secs(60),
                http2_keepalive: std::time::Duration::from_secs(20),
                otlp_endpoint: None,
                otlp_sample_ratio: 1.0,
            ]
            checks [
                (|s: &$name| -> Result<(), $crate::settings::SettingsError> {
                    $crate::settings::require_nonzero("handshake_timeout", s.handshake_timeout.is_zero())?;
                    $crate::settings::require_nonzero("http_idle_timeout", s.http_idle_timeout.is_zero())?;
                    $crate::settings::require_nonzero("http2_keepalive", s.http2_keepalive.is_zero())?;
                    $crate::telemetry::check(s.otlp_endpoint.as_deref(), s.otlp_sample_ratio)?;
                    $crate::settings::check_redis_url("redis_url", &s.redis_url, s.redis_cluster)
                })
            ]
            methods []
        );
    };

    (@munch [jwt $($rest:ident)*]
        meta [$($meta:tt)*] name [$name:ident] cli [$cli:ty]
        fields [$($fields:tt)*] defaults [$($defaults:tt)*]
        checks [$($checks:tt)*] methods [$($methods:tt)*]
    ) => {
        $crate::process_settings!(@munch [$($rest)*]
            meta [$($meta)*] name [$name] cli [$cli]
            fields [$($fields)*
                /// HS256 secret of client tokens.
                pub jwt_secret: Option<String>,
                /// RS256/ES256 public key (PEM) of client tokens.
                pub jwt_public_key: Option<std::path::PathBuf>,
                /// Required `aud` of client tokens.
                pub jwt_audience: Option<String>,
                /// Required `iss` of client tokens.
                pub jwt_issuer: Option<String>,
            ]
            defaults [$($defaults)*
                jwt_secret: None,
                jwt_public_key: None,
                jwt_audience: None,
                jwt_issuer: None,
            ]
            checks [$($checks)*]
            methods [$($methods)*
                /// How client tokens are checked.
                pub fn jwt(&self) -> $crate::auth::JwtSettings<'_> {
                    $crate::auth::JwtSettings {
                        secret: self.jwt_secret.as_deref(),
                        public_key: self.jwt_public_key.as_deref(),
                        audience: self.jwt_audience.as_deref(),
                        issuer: self.jwt_issuer.as_deref(),
                    }
                }
            ]
        );
    };

    (@munch [per_ip $($rest:ident)*]
        meta [$($meta:tt)*] name [$name:ident] cli [$cli:ty]
        fields [$($fields:tt)*] defaults [$($defaults:tt)*]
        checks [$($checks:tt)*] methods [$($methods:tt)*]
    ) => {
        $crate::process_settings!(@munch [$($rest)*]
            meta [$($meta)*] name [$name] cli [$cli]
            fields [$($fields)*
                /// Connections one address (IPv6: one /64) may hold.
                pub max_connections_per_ip: usize,
                /// New connections per second one address may open.
                pub max_connect_rate_per_ip: f64,
                /// New connections one address may open at once.
                pub max_connect_burst_per_ip: u32,
            ]
            defaults [$($defaults)*
                max_connections_per_ip: 1000,
                max_connect_rate_per_ip: 50.0,
                max_connect_burst_per_ip: 500,
            ]
            checks [$($checks)*
                (|s: &$name| -> Result<(), $crate::settings::SettingsError> {
                    $crate::settings::require_nonzero("max_connections_per_ip", s.max_connections_per_ip == 0)?;
                    $crate::settings::require_nonzero("max_connect_burst_per_ip", s.max_connect_burst_per_ip == 0)?;
                    $crate::settings::require_positive("max_connect_rate_per_ip", s.max_connect_rate_per_ip)
                })
            ]
            methods [$($methods)*]
        );
    };

    (@munch [bus $($rest:ident)*]
        meta [$($meta:tt)*] name [$name:ident] cli [$cli:ty]
        fields [$($fields:tt)*] defaults [$($defaults:tt)*]
        checks [$($checks:tt)*] methods [$($methods:tt)*]
    ) => {
        $crate::process_settings!(@munch [$($rest)*]
            meta [$($meta)*] name [$name] cli [$cli]
            fields [$($fields)*
                /// Messages the Redis reader may hold for a slow consumer.
                pub bus_buffer: usize,
                /// Bytes the Redis reader may hold for a slow consumer.
                pub bus_buffer_bytes: usize,
            ]
            defaults [$($defaults)*
                bus_buffer: 65_536,
                bus_buffer_bytes: 64 << 20,
            ]
            checks [$($checks)*
                (|s: &$name| -> Result<(), $crate::settings::SettingsError> {
                    $crate::settings::require_nonzero("bus_buffer", s.bus_buffer == 0)?;
                    $crate::settings::require_nonzero("bus_buffer_bytes", s.bus_buffer_bytes == 0)
                })
            ]
            methods [$($methods)*]
        );
    };

    (@munch [namespaces $($rest:ident)*]
        meta [$($meta:tt)*] name [$name:ident] cli [$cli:ty]
        fields [$($fields:tt)*] defaults [$($defaults:tt)*]
        checks [$($checks:tt)*] methods [$($methods:tt)*]
    ) => {
        $crate::process_settings!(@munch [$($rest)*]
            meta [$($meta)*] name [$name] cli [$cli]
            fields [$($fields)*
                /// `[namespaces.<name>]` tables (the settings file only).
                pub namespaces: std::collections::BTreeMap<String, $crate::namespaces::NamespaceSettings>,
            ]
            defaults [$($defaults)*
                namespaces: Default::default(),
            ]
            checks [$($checks)*
                (|s: &$name| -> Result<(), $crate::settings::SettingsError> {
                    $crate::namespaces::validate(&s.namespaces)
                })
            ]
            methods [$($methods)*]
        );
    };

    (@munch []
        meta [$($meta:tt)*] name [$name:ident] cli [$cli:ty]
        fields [$($fields:tt)*] defaults [$($defaults:tt)*]
        checks [$($check:tt)*] methods [$($methods:tt)*]
    ) => {
        $($meta)*
        #[derive(serde::Deserialize, Debug, Clone)]
        #[serde(deny_unknown_fields, default)]
        pub struct $name {
            $($fields)*
        }

        impl Default for $name {
            fn default() -> Self {
                $name { $($defaults)* }
            }
        }

        impl $crate::settings::Validate for $name {
            fn validate(&self) -> Result<(), $crate::settings::SettingsError> {
                $( ($check)(self)?; )*
                self.validate_own()
            }
        }

        impl $name {
            $($methods)*

            /// What every connection to this process may cost in time.
            pub fn serve_limits(&self) -> $crate::serve::ServeLimits {
                $crate::serve::ServeLimits {
                    handshake: self.handshake_timeout,
                    idle: self.http_idle_timeout,
                    http2_keepalive: self.http2_keepalive,
                }
            }

            /// Parses flags and env, reads the file, validates.
            pub fn from_args() -> Result<Self, $crate::settings::SettingsError> {
                let cli = <$cli as clap::Parser>::parse();
                $crate::settings::load(&cli, cli.common.config.as_deref())
            }
        }

        $crate::impl_served!($name);
    };
}
