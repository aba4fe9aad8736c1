use super::*;
use crate::sensors::{Battery, BatteryReading, ChargeStatus, PowerFlags, Readings, Unavailable};
use proptest::prelude::*;

fn cfg() -> ThrottleSection {
    ThrottleSection::default()
}

/// Thresholds only: no smoothing, no dwell.
fn instant_cfg() -> ThrottleSection {
    ThrottleSection {
        smoothing_samples: 1,
        dwell: crate::units::HumanDuration(Duration::ZERO),
        ..cfg()
    }
}

fn temp(t: f64) -> Readings {
    Readings {
        cpu_temp_c: Ok(t),
        battery: BatteryReading::Absent,
        power: Err(Unavailable::NoSource),
    }
}

fn battery(percent: f64, status: ChargeStatus) -> Readings {
    Readings {
        battery: BatteryReading::Present(Battery {
            percent,
            status,
            voltage_v: None,
        }),
        ..temp(50.0)
    }
}

fn run(cfg: &ThrottleSection, steps: &[(Readings, Level)]) {
    let mut p = Policy::new(cfg);
    let t0 = Instant::now();
    for (i, (r, want)) in steps.iter().enumerate() {
        let d = p.step(t0 + Duration::from_secs(i as u64), r);
        assert_eq!(
            d.level,
            *want,
            "step {i}: {r:?} -> {:?}",
            d.reason_strings()
        );
    }
}

#[test]
fn temperature_thresholds_going_up() {
    use Level::*;
    run(
        &instant_cfg(),
        &[
            (temp(50.0), Full),
            (temp(74.9), Full),
            (temp(75.0), Reduced),
            (temp(79.9), Reduced),
            (temp(80.0), Paused),
            (temp(95.0), Paused),
        ],
    );
}

#[test]
fn temperature_hysteresis_going_down() {
    use Level::*;
    run(
        &instant_cfg(),
        &[
            (temp(81.0), Paused),
            (temp(79.0), Paused), // below 80 but above 75: still paused
            (temp(75.1), Paused),
            (temp(75.0), Reduced), // at pause - 5: leaves paused, still >= reduce
            (temp(74.0), Reduced), // below reduce but above 70: still reduced
            (temp(70.1), Reduced),
            (temp(70.0), Full),
            (temp(74.9), Full), // climbing again: reduce only at 75
            (temp(75.0), Reduced),
            (temp(72.0), Reduced),
            (temp(80.0), Paused),
        ],
    );
}

#[test]
fn battery_thresholds_and_hysteresis() {
    use ChargeStatus::{Charging, Discharging, NotCharging, Unknown};
    use Level::*;
    run(
        &instant_cfg(),
        &[
            (battery(41.0, Discharging), Full),
            (battery(40.0, Discharging), Full),
            (battery(39.9, Discharging), Reduced),
            (battery(20.0, Discharging), Reduced),
            (battery(19.9, Discharging), Paused),
            (battery(15.0, Discharging), Paused),
            (battery(24.9, Discharging), Paused), // resumes at pause + 5
            (battery(25.0, Discharging), Reduced),
            (battery(44.9, Discharging), Reduced), // resumes at reduce + 5
            (battery(45.0, Discharging), Full),
            (battery(39.0, Discharging), Reduced),
            (battery(39.0, Charging), Full), // charging lifts the battery rules
            (battery(10.0, Charging), Full),
            (battery(10.0, ChargeStatus::Full), Full),
            (battery(10.0, NotCharging), Full), // on external power
            (battery(10.0, Unknown), Paused),   // unknown status: rules apply
        ],
    );
}

#[test]
fn mains_means_no_battery_rule() {
    let r = Readings {
        battery: BatteryReading::Absent,
        ..temp(40.0)
    };
    let d = Policy::new(&instant_cfg()).step(Instant::now(), &r);
    assert_eq!(d.level, Level::Full);
    assert!(d.reasons.is_empty());
    assert_eq!(d.factor, 1.0);
}

#[test]
fn undervoltage_means_at_least_reduced() {
    let uv = |t, now: bool| Readings {
        power: Ok(PowerFlags::from_throttled(if now {
            0x50005
        } else {
            0x50000
        })),
        ..temp(t)
    };
    use Level::*;
    run(
        &instant_cfg(),
        &[
            (uv(50.0, false), Full),
            (uv(50.0, true), Reduced),
            (uv(85.0, true), Paused),
            (uv(50.0, false), Full),
        ],
    );
    let d = Policy::new(&instant_cfg()).step(Instant::now(), &uv(50.0, true));
    assert_eq!(d.reason_strings(), ["under-voltage: at least reduced"]);
}

#[test]
fn unknown_readings_use_the_configured_level() {
    let unknown_temp = Readings {
        cpu_temp_c: Err(Unavailable::Missing),
        ..temp(0.0)
    };
    let d = Policy::new(&instant_cfg()).step(Instant::now(), &unknown_temp);
    assert_eq!(
        d.level,
        Level::Full,
        "documented default: unknown temperature is full"
    );
    let c = ThrottleSection {
        unknown_temp: Level::Reduced,
        unknown_battery: Level::Paused,
        ..instant_cfg()
    };
    let d = Policy::new(&c).step(Instant::now(), &unknown_temp);
    assert_eq!(d.level, Level::Reduced);
    assert_eq!(
        d.reason_strings(),
        ["cpu temperature unknown: reduced (throttle.unknown_temp)"]
    );
    let unknown_battery = Readings {
        battery: BatteryReading::Unavailable(Unavailable::I2cNack),
        ..temp(50.0)
    };
    assert_eq!(
        Policy::new(&c).step(Instant::now(), &unknown_battery).level,
        Level::Paused
    );
}

#[test]
fn factors() {
    let p = Policy::new(&cfg());
    assert_eq!(p.factor(Level::Full), 1.0);
    assert_eq!(p.factor(Level::Reduced), 0.25);
    assert_eq!(p.factor(Level::Paused), 0.0);
}

#[test]
fn stepping_down_is_immediate_stepping_up_waits_for_dwell() {
    let c = ThrottleSection {
        smoothing_samples: 1,
        ..cfg()
    };
    let mut p = Policy::new(&c);
    let t0 = Instant::now();
    let at = |s: u64| t0 + Duration::from_secs(s);
    assert_eq!(p.step(at(0), &temp(50.0)).level, Level::Full);
    assert_eq!(
        p.step(at(1), &temp(85.0)).level,
        Level::Paused,
        "down at once"
    );
    let d = p.step(at(2), &temp(50.0));
    assert_eq!(d.level, Level::Paused);
    assert_eq!(
        d.reason_strings(),
        ["holding for 30s more before full (dwell)"]
    );
    assert_eq!(
        p.step(at(31), &temp(50.0)).level,
        Level::Paused,
        "29 s of calm"
    );
    assert_eq!(
        p.step(at(32), &temp(50.0)).level,
        Level::Full,
        "30 s of calm"
    );
    // A hot reading during the calm period restarts it.
    assert_eq!(p.step(at(33), &temp(76.0)).level, Level::Reduced);
    assert_eq!(p.step(at(40), &temp(50.0)).level, Level::Reduced);
    assert_eq!(p.step(at(50), &temp(76.0)).level, Level::Reduced);
    assert_eq!(p.step(at(60), &temp(50.0)).level, Level::Reduced);
    assert_eq!(p.step(at(89), &temp(50.0)).level, Level::Reduced);
    assert_eq!(p.step(at(90), &temp(50.0)).level, Level::Full);
}

#[test]
fn stepping_up_goes_to_the_most_restrictive_level_seen_while_calm() {
    let c = ThrottleSection {
        smoothing_samples: 1,
        ..cfg()
    };
    let mut p = Policy::new(&c);
    let t0 = Instant::now();
    let at = |s: u64| t0 + Duration::from_secs(s);
    assert_eq!(p.step(at(0), &temp(85.0)).level, Level::Paused);
    assert_eq!(p.step(at(1), &temp(74.0)).level, Level::Paused); // calls for reduced
    assert_eq!(p.step(at(10), &temp(50.0)).level, Level::Paused); // calls for full
    assert_eq!(p.step(at(31), &temp(50.0)).level, Level::Reduced); // floor of the calm period
    // Its own dwell starts at the change.
    assert_eq!(p.step(at(40), &temp(50.0)).level, Level::Reduced);
    assert_eq!(p.step(at(69), &temp(50.0)).level, Level::Reduced);
    assert_eq!(p.step(at(70), &temp(50.0)).level, Level::Full);
}

#[test]
fn one_spike_does_not_change_the_level() {
    let mut p = Policy::new(&cfg());
    let t0 = Instant::now();
    for (i, t) in [60.0, 61.0, 95.0, 60.5, 61.0].into_iter().enumerate() {
        let d = p.step(t0 + Duration::from_secs(5 * i as u64), &temp(t));
        assert_eq!(
            d.level,
            Level::Full,
            "reading {i} ({t} C) flapped the level"
        );
    }
    // Two hot readings in a row are not a spike.
    let d = p.step(t0 + Duration::from_secs(30), &temp(82.0));
    assert_eq!(d.level, Level::Full);
    let d = p.step(t0 + Duration::from_secs(35), &temp(82.0));
    assert_eq!(d.level, Level::Paused);
    assert_eq!(d.smoothed_temp_c, Some(82.0));
}

#[test]
fn operator_force_composes_with_the_sensors() {
    let mut p = Policy::new(&instant_cfg());
    let t0 = Instant::now();
    let at = |s: u64| t0 + Duration::from_secs(s);
    p.force(at(0), Level::Reduced, Duration::from_secs(60), false);
    assert_eq!(
        p.step(at(1), &temp(50.0)).level,
        Level::Reduced,
        "floor above full"
    );
    let d = p.step(at(2), &temp(85.0));
    assert_eq!(d.level, Level::Paused, "sensors more restrictive: they win");
    assert_eq!(d.sensor_level, Level::Paused);
    p.force(at(3), Level::Full, Duration::from_secs(60), false);
    assert_eq!(
        p.step(at(4), &temp(85.0)).level,
        Level::Paused,
        "a plain force cannot loosen"
    );
    p.force(at(5), Level::Full, Duration::from_secs(60), true);
    let d = p.step(at(6), &temp(85.0));
    assert_eq!(d.level, Level::Full, "forced over sensors wins");
    assert_eq!(d.factor, 1.0);
    assert!(
        d.reason_strings()
            .iter()
            .any(|r| r.starts_with("operator forced over sensors: full for 59s"))
    );
    assert_eq!(
        p.step(at(65), &temp(85.0)).level,
        Level::Paused,
        "the force lapses at its deadline"
    );
    p.force(at(66), Level::Paused, Duration::from_secs(600), false);
    assert_eq!(p.step(at(67), &temp(50.0)).level, Level::Paused);
    p.clear_force();
    assert_eq!(p.step(at(68), &temp(50.0)).level, Level::Full);
}

#[test]
fn replay_of_a_heat_soak_trace() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/traces/pi4-heat-cool.csv"
    ))
    .unwrap();
    let mut p = Policy::new(&cfg());
    let t0 = Instant::now();
    let mut timeline = Vec::new();
    let mut last = None;
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with("t_s"))
    {
        let (t, c) = line.split_once(',').unwrap();
        let t: u64 = t.parse().unwrap();
        let d = p.step(t0 + Duration::from_secs(t), &temp(c.parse().unwrap()));
        if last != Some(d.level) {
            timeline.push((t, d.level));
            last = Some(d.level);
        }
    }
    use Level::*;
    assert_eq!(
        timeline,
        [
            (0, Full),
            (35, Reduced),
            (60, Paused),
            (120, Reduced),
            (155, Full)
        ]
    );
}

fn arb_readings() -> impl Strategy<Value = Readings> {
    let temp = prop_oneof![
        4 => (20.0f64..100.0).prop_map(Ok),
        1 => Just(Err(Unavailable::Garbage)),
    ];
    let status = prop_oneof![
        Just(ChargeStatus::Discharging),
        Just(ChargeStatus::Charging),
        Just(ChargeStatus::Full),
        Just(ChargeStatus::Unknown),
    ];
    let battery = prop_oneof![
        Just(BatteryReading::Absent),
        (0.0f64..100.0, status).prop_map(|(percent, status)| BatteryReading::Present(Battery {
            percent,
            status,
            voltage_v: None
        })),
        Just(BatteryReading::Unavailable(Unavailable::I2cNack)),
    ];
    let power = prop_oneof![
        Just(Err(Unavailable::NoSource)),
        any::<bool>().prop_map(|uv| Ok(PowerFlags::from_undervoltage_alarm(uv))),
    ];
    (temp, battery, power).prop_map(|(cpu_temp_c, battery, power)| Readings {
        cpu_temp_c,
        battery,
        power,
    })
}

proptest! {
    /// For any input sequence and any timing, the sensor level never steps up (to a less
    /// restrictive level) sooner than `dwell` after its previous change.
    #[test]
    fn never_steps_up_before_the_dwell_time(
        dwell_s in 0u64..60,
        smoothing in 1u8..=8,
        steps in prop::collection::vec((0u64..20_000, arb_readings()), 1..200),
    ) {
        let c = ThrottleSection {
            dwell: crate::units::HumanDuration(Duration::from_secs(dwell_s)),
            smoothing_samples: smoothing,
            unknown_battery: Level::Reduced,
            ..cfg()
        };
        let mut p = Policy::new(&c);
        let t0 = Instant::now();
        let mut now = t0;
        let mut last: Option<(Instant, Level)> = None;
        for (dt_ms, r) in steps {
            now += Duration::from_millis(dt_ms);
            let d = p.step(now, &r);
            prop_assert_eq!(d.level, d.sensor_level);
            if let Some((changed_at, prev)) = last {
                if d.level < prev {
                    prop_assert!(
                        now.duration_since(changed_at) >= c.dwell.0,
                        "stepped up from {} to {} after {:?} (dwell {:?})",
                        prev, d.level, now.duration_since(changed_at), c.dwell.0
                    );
                }
                if d.level != prev {
                    last = Some((now, d.level));
                }
            } else {
                last = Some((now, d.level));
            }
        }
    }
}
