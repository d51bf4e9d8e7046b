//! The power model: watts per phase from `spec.watts`.
use crate::operator::api::Watts;
use crate::operator::machine::{Phase, PowerState};

/// What the machine's power supply is doing, as far as its draw goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PowerPhase {
    /// Powered off: the standby draw.
    Off,
    /// Powered, not yet serving: `boot` (default `idle`).
    Booting,
    /// Serving: between `idle` and `busy` by load.
    On,
    /// Shutting down: `shutdown` (default `idle`).
    ShuttingDown,
}

impl PowerPhase {
    /// Whether the machine is powered (anything but off).
    pub fn powered(self) -> bool {
        self != PowerPhase::Off
    }

    /// The power phase of a lifecycle phase. A power-on issued counts as booting (the machine
    /// draws from the moment it is switched on), a power-off issued as shutting down; a
    /// machine whose phase is `Unknown` or `Failed` is counted by its observed power (`On`
    /// draws as serving an idle load: a hung boot still runs its fans), off when unknown.
    pub fn of(phase: Phase, observed: Option<PowerState>) -> PowerPhase {
        match phase {
            Phase::Off => PowerPhase::Off,
            Phase::PoweringOn | Phase::Booting => PowerPhase::Booting,
            Phase::Ready => PowerPhase::On,
            Phase::PoweringOff => PowerPhase::ShuttingDown,
            Phase::Unknown | Phase::Failed => match observed {
                Some(PowerState::On) => PowerPhase::On,
                Some(PowerState::Off) | None => PowerPhase::Off,
            },
        }
    }
}

/// Watts drawn in `phase` by a machine with `watts` (`None`: no model, the draw is unknown).
/// While on, `cpu_fraction` (CPU requested / allocatable, clamped to 0..=1) interpolates
/// between `idle` and `busy`.
pub fn draw(watts: Option<&Watts>, phase: PowerPhase, cpu_fraction: f64) -> Option<f64> {
    let w = watts?;
    let idle = w.idle();
    Some(match phase {
        PowerPhase::Off => w.standby(),
        PowerPhase::Booting => w.boot.unwrap_or(idle),
        PowerPhase::ShuttingDown => w.shutdown.unwrap_or(idle),
        PowerPhase::On => {
            let load = if cpu_fraction.is_finite() {
                cpu_fraction.clamp(0.0, 1.0)
            } else {
                0.0
            };
            idle + (w.busy() - idle) * load
        }
    })
}

/// The baseline's draw: the same machine always on at idle (`None` without a model).
pub fn baseline_draw(watts: Option<&Watts>) -> Option<f64> {
    watts.map(Watts::idle)
}

/// Average watts over the interval since the meter's previous mark: the increase of its
/// cumulative counter when both ends have one and it did not go backwards (a reset or a
/// replaced plug), else the current reading's watts. `prev` is the counter (Wh) and when it was
/// read; `now_wh` and `at` the current reading's.
pub fn metered_watts(
    prev: Option<(f64, jiff::Timestamp)>,
    watts: f64,
    now_wh: Option<f64>,
    at: jiff::Timestamp,
) -> f64 {
    if let (Some((before, then)), Some(after)) = (prev, now_wh) {
        let hours = at.duration_since(then).as_secs_f64() / 3600.0;
        if after >= before && hours > 0.0 {
            return (after - before) / hours;
        }
    }
    watts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watts() -> Watts {
        Watts {
            idle: Some(20.0),
            busy: Some(60.0),
            standby: Some(1.5),
            boot: Some(45.0),
            ..Watts::default()
        }
    }

    #[test]
    fn each_phase_draws_its_figure_and_load_interpolates_idle_to_busy() {
        let w = watts();
        assert_eq!(draw(Some(&w), PowerPhase::Off, 0.9), Some(1.5));
        assert_eq!(draw(Some(&w), PowerPhase::Booting, 0.9), Some(45.0));
        assert_eq!(
            draw(Some(&w), PowerPhase::ShuttingDown, 0.9),
            Some(20.0),
            "default idle"
        );
        assert_eq!(draw(Some(&w), PowerPhase::On, 0.0), Some(20.0));
        assert_eq!(draw(Some(&w), PowerPhase::On, 0.25), Some(30.0));
        assert_eq!(draw(Some(&w), PowerPhase::On, 3.0), Some(60.0), "clamped");
        assert_eq!(draw(Some(&w), PowerPhase::On, f64::NAN), Some(20.0));
    }

    #[test]
    fn a_machine_without_a_model_draws_an_unknown_amount_not_zero() {
        assert_eq!(draw(None, PowerPhase::On, 0.5), None);
        assert_eq!(baseline_draw(None), None);
        let only_idle = Watts {
            idle: Some(10.0),
            ..Watts::default()
        };
        assert_eq!(draw(Some(&only_idle), PowerPhase::Booting, 0.0), Some(10.0));
        assert_eq!(draw(Some(&only_idle), PowerPhase::Off, 0.0), Some(0.0));
        assert_eq!(draw(Some(&only_idle), PowerPhase::On, 1.0), Some(10.0));
    }

    #[test]
    fn lifecycle_phases_map_to_power_phases() {
        assert_eq!(PowerPhase::of(Phase::PoweringOn, None), PowerPhase::Booting);
        assert_eq!(PowerPhase::of(Phase::Ready, None), PowerPhase::On);
        assert_eq!(
            PowerPhase::of(Phase::PoweringOff, None),
            PowerPhase::ShuttingDown
        );
        assert_eq!(
            PowerPhase::of(Phase::Failed, Some(PowerState::On)),
            PowerPhase::On
        );
        assert_eq!(
            PowerPhase::of(Phase::Failed, Some(PowerState::Off)),
            PowerPhase::Off
        );
        assert_eq!(PowerPhase::of(Phase::Unknown, None), PowerPhase::Off);
    }

    #[test]
    fn a_meter_counter_is_preferred_unless_it_went_backwards() {
        let t0 = jiff::Timestamp::UNIX_EPOCH;
        let t1 = t0 + jiff::SignedDuration::from_hours(2);
        assert_eq!(
            metered_watts(Some((100.0, t0)), 55.0, Some(160.0), t1),
            30.0
        );
        assert_eq!(
            metered_watts(Some((100.0, t0)), 55.0, Some(3.0), t1),
            55.0,
            "reset"
        );
        assert_eq!(metered_watts(None, 55.0, Some(160.0), t1), 55.0);
        assert_eq!(metered_watts(Some((100.0, t0)), 55.0, None, t1), 55.0);
    }
}
