//! Configuration: `Config` defaults, loading from TOML with human-readable
//! durations, unknown keys rejected, `Config::validate` errors, and the
//! builder's own errors (no runtime).

mod common;

use std::time::Duration;

use common::ScriptedManager;
use wharf::{Config, ConfigError, Pool};

#[test]
fn defaults_are_the_documented_ones() {
    let c = Config::default();
    assert_eq!(c.name, "default");
    assert_eq!(c.max_size, 10);
    assert_eq!(c.min_idle, 0);
    assert_eq!(c.acquire_timeout, Duration::from_secs(30));
    assert_eq!(c.max_waiting, None);
    assert_eq!(c.connect_timeout, Duration::from_secs(10));
    assert_eq!(c.max_connecting, 2);
    assert_eq!(c.connect_backoff, Duration::from_millis(100));
    assert_eq!(c.connect_backoff_max, Duration::from_secs(10));
    assert_eq!(c.validate_after, Some(Duration::from_millis(500)));
    assert_eq!(c.validation_timeout, Duration::from_secs(5));
    assert_eq!(c.idle_timeout, Some(Duration::from_secs(10 * 60)));
    assert_eq!(c.max_lifetime, Some(Duration::from_secs(30 * 60)));
    assert_eq!(c.lifetime_jitter, 0.025);
    assert_eq!(c.max_uses, None);
    assert_eq!(c.keepalive_interval, None);
    assert_eq!(c.leak_detection_threshold, None);
    assert_eq!(c.close_timeout, Duration::from_secs(30));
    assert_eq!(c.maintenance_interval, Duration::from_secs(1));
    assert_eq!(c.validate(), Ok(()));
}

#[test]
fn every_setting_loads_from_toml_with_human_durations() {
    let c: Config = toml::from_str(
        r#"
        name = "orders"
        max_size = 20
        min_idle = 4
        acquire_timeout = "2s"
        max_waiting = 100
        connect_timeout = "1s 500ms"
        max_connecting = 3
        connect_backoff = "50ms"
        connect_backoff_max = "1m"
        validate_after = "250ms"
        validation_timeout = "3s"
        idle_timeout = "5m"
        max_lifetime = "1h 30m"
        lifetime_jitter = 0.1
        max_uses = 1000
        keepalive_interval = "30s"
        leak_detection_threshold = "10s"
        close_timeout = "15s"
        maintenance_interval = "500ms"
        reserve_size = 5
        reserve_timeout = "3s"
        fail_fast = true

        [circuit_breaker]
        failure_rate = 0.25
        min_calls = 10
        open_for = "30s"

        [[lanes]]
        name = "fast"
        max_in_use = 16

        [[lanes]]
        name = "slow"
        max_in_use = 4
        acquire_timeout = "1m"
        "#,
    )
    .unwrap();
    assert_eq!(
        c,
        Config {
            name: "orders".into(),
            max_size: 20,
            min_idle: 4,
            min_size: 0,
            acquire_timeout: Duration::from_secs(2),
            max_waiting: Some(100),
            connect_timeout: Duration::from_millis(1500),
            max_connecting: 3,
            connect_backoff: Duration::from_millis(50),
            connect_backoff_max: Duration::from_secs(60),
            validate_after: Some(Duration::from_millis(250)),
            validation_timeout: Duration::from_secs(3),
            idle_timeout: Some(Duration::from_secs(5 * 60)),
            max_lifetime: Some(Duration::from_secs(90 * 60)),
            lifetime_jitter: 0.1,
            max_uses: Some(1000),
            keepalive_interval: Some(Duration::from_secs(30)),
            leak_detection_threshold: Some(Duration::from_secs(10)),
            close_timeout: Duration::from_secs(15),
            maintenance_interval: Duration::from_millis(500),
            reserve_size: 5,
            reserve_timeout: Duration::from_secs(3),
            fail_fast: true,
            circuit_breaker: Some(wharf::BreakerConfig {
                failure_rate: 0.25,
                min_calls: 10,
                open_for: Duration::from_secs(30),
                ..wharf::BreakerConfig::default()
            }),
            lanes: vec![
                wharf::LaneConfig::new("fast", 16),
                wharf::LaneConfig::new("slow", 4).acquire_timeout(Duration::from_secs(60)),
            ],
        }
    );
    assert_eq!(c.validate(), Ok(()));
}

#[test]
fn settings_left_out_of_toml_keep_their_defaults() {
    let c: Config = toml::from_str("max_size = 3\nacquire_timeout = \"750ms\"").unwrap();
    assert_eq!(
        c,
        Config {
            max_size: 3,
            acquire_timeout: Duration::from_millis(750),
            ..Config::default()
        }
    );
    let empty: Config = toml::from_str("").unwrap();
    assert_eq!(empty, Config::default());
}

#[test]
fn unknown_keys_are_rejected() {
    let err = toml::from_str::<Config>("max_size = 5\nmax_conections = 3").unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("unknown field `max_conections`"),
        "{message}"
    );
}

#[test]
fn malformed_durations_and_values_are_rejected() {
    for bad in [
        r#"acquire_timeout = "30 parsecs""#,
        r#"acquire_timeout = 30"#,
        r#"idle_timeout = "soon""#,
        r#"max_size = -1"#,
        r#"max_size = "ten""#,
    ] {
        assert!(toml::from_str::<Config>(bad).is_err(), "accepted {bad:?}");
    }
}

#[test]
fn config_round_trips_through_toml() {
    let config = Config {
        name: "api".into(),
        max_size: 7,
        acquire_timeout: Duration::from_millis(1500),
        keepalive_interval: Some(Duration::from_secs(20)),
        ..Config::default()
    };
    let text = toml::to_string(&config).unwrap();
    assert!(text.contains(r#"acquire_timeout = "1s 500ms""#), "{text}");
    let back: Config = toml::from_str(&text).unwrap();
    assert_eq!(back, config);
}

#[test]
fn settings_turned_off_survive_a_toml_round_trip() {
    let config = Config {
        idle_timeout: None,
        max_lifetime: None,
        validate_after: None,
        ..Config::default()
    };
    let text = toml::to_string(&config).unwrap();
    assert!(text.contains(r#"idle_timeout = "off""#), "{text}");
    let back: Config = toml::from_str(&text).unwrap();
    assert_eq!(back, config, "serialized as:\n{text}");
}

#[test]
fn off_turns_an_optional_setting_off_and_a_bad_duration_is_explained() {
    let config: Config = toml::from_str(r#"max_lifetime = "off""#).unwrap();
    assert_eq!(config.max_lifetime, None);
    let err = toml::from_str::<Config>(r#"idle_timeout = "soon""#).unwrap_err();
    assert!(
        err.to_string().contains("invalid duration \"soon\""),
        "{err}"
    );
}

#[test]
fn validate_rejects_settings_that_contradict_each_other() {
    let check = |config: Config| config.validate();
    assert_eq!(
        check(Config {
            min_idle: 5,
            max_size: 2,
            ..Config::default()
        }),
        Err(ConfigError::MinIdleAboveMax {
            min_idle: 5,
            max_size: 2
        })
    );
    assert_eq!(
        check(Config {
            min_size: 3,
            max_size: 2,
            ..Config::default()
        }),
        Err(ConfigError::MinSizeAboveMax {
            min_size: 3,
            max_size: 2
        })
    );
    assert_eq!(
        check(Config {
            max_size: 0,
            ..Config::default()
        }),
        Err(ConfigError::ZeroMaxSize)
    );
    assert_eq!(
        check(Config {
            max_connecting: 0,
            ..Config::default()
        }),
        Err(ConfigError::ZeroMaxConnecting)
    );
    assert_eq!(
        check(Config {
            lifetime_jitter: 1.5,
            ..Config::default()
        }),
        Err(ConfigError::BadJitter(1.5))
    );
    assert!(matches!(
        check(Config {
            lifetime_jitter: f64::NAN,
            ..Config::default()
        }),
        Err(ConfigError::BadJitter(_))
    ));
    // At the limits, fine.
    assert_eq!(
        check(Config {
            min_idle: 2,
            max_size: 2,
            lifetime_jitter: 1.0,
            ..Config::default()
        }),
        Ok(())
    );
    assert_eq!(
        ConfigError::MinIdleAboveMax {
            min_idle: 5,
            max_size: 2
        }
        .to_string(),
        "min_idle (5) must not exceed max_size (2)"
    );
}

#[test]
fn validate_rejects_a_zero_maintenance_interval() {
    let config = Config {
        maintenance_interval: Duration::ZERO,
        ..Config::default()
    };
    // A zero period would panic the maintenance task, silently leaving the
    // pool without eviction, keepalive or min_idle top-ups.
    assert_eq!(config.validate(), Err(ConfigError::ZeroMaintenanceInterval));
    let from_toml: Config = toml::from_str(r#"maintenance_interval = "0s""#).unwrap();
    assert_eq!(
        from_toml.validate(),
        Err(ConfigError::ZeroMaintenanceInterval)
    );
}

#[test]
fn build_outside_a_runtime_fails_with_no_runtime() {
    let result = Pool::builder(ScriptedManager::default()).build();
    assert!(matches!(result, Err(ConfigError::NoRuntime)));
    let message = ConfigError::NoRuntime.to_string();
    assert!(message.contains("Tokio runtime"), "{message}");
}

#[test]
fn build_reports_an_invalid_config_before_looking_for_a_runtime() {
    let result = Pool::builder(ScriptedManager::default())
        .max_size(1)
        .min_idle(2)
        .build();
    assert!(matches!(
        result,
        Err(ConfigError::MinIdleAboveMax {
            min_idle: 2,
            max_size: 1
        })
    ));
}

#[tokio::test]
async fn builder_takes_a_whole_config_and_plain_literals() {
    let config: Config = toml::from_str("name = \"jobs\"\nmax_size = 6\nmin_idle = 0").unwrap();
    let pool = Pool::builder(ScriptedManager::default())
        .config(config.clone())
        .build()
        .unwrap();
    assert_eq!(pool.config(), &config);
    assert_eq!(pool.status().max_size, 6);
    assert_eq!(pool.metrics().name, "jobs");

    // Integer literals and bare values for optional settings compile as is.
    let pool = Pool::builder(ScriptedManager::default())
        .max_size(4)
        .min_idle(1)
        .max_connecting(2)
        .max_waiting(8)
        .max_uses(100)
        .idle_timeout(Duration::from_secs(60))
        .max_lifetime(None)
        .build()
        .unwrap();
    let config = pool.config();
    assert_eq!((config.max_size, config.min_idle), (4, 1));
    assert_eq!((config.max_waiting, config.max_uses), (Some(8), Some(100)));
    assert_eq!(config.idle_timeout, Some(Duration::from_secs(60)));
    assert_eq!(config.max_lifetime, None);
}
