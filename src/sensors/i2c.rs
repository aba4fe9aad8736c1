//! I2C fuel gauges: MAX17048/49, INA219 and PiSugar 3.
//!
//! The gauges talk to a [`RegisterBus`], a two-method trait over register reads. On a Pi
//! that is rppal's `/dev/i2c-N` (cargo feature `i2c`, on by default, compiled on ARM Linux
//! only); in tests and demos it is a [`FakeRegisters`] map whose values are worked from
//! the datasheets, so the conversions below run for real either way. Under a fake sysfs
//! root, `<root>/dev/i2c-N` may hold such a map as text, so a whole board, gauges
//! included, can be simulated from a directory.

use super::{Battery, ChargeStatus, Unavailable};
use std::collections::HashMap;
use std::path::Path;

/// Register access on one I2C bus.
pub trait RegisterBus: Send {
    /// A 16-bit register, most significant byte first (SMBus "word swapped").
    fn read_word_be(&mut self, addr: u8, reg: u8) -> Result<u16, Unavailable>;
    fn read_byte(&mut self, addr: u8, reg: u8) -> Result<u8, Unavailable>;
}

/// A register map standing in for the bus. Addresses that are not in the map do not
/// acknowledge, like an absent chip.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FakeRegisters {
    words: HashMap<(u8, u8), u16>,
    bytes: HashMap<(u8, u8), u8>,
}

impl FakeRegisters {
    pub fn word(mut self, addr: u8, reg: u8, value: u16) -> Self {
        self.words.insert((addr, reg), value);
        self
    }
    pub fn byte(mut self, addr: u8, reg: u8, value: u8) -> Self {
        self.bytes.insert((addr, reg), value);
        self
    }

    /// Parses the text form: one register per line, `ADDR REG VALUE` in hex (`0x36 0x02
    /// 0xd000`). A value above 0xff, or written with four hex digits, is a word register.
    /// `#` starts a comment.
    pub fn parse(text: &str) -> Result<FakeRegisters, String> {
        let mut map = FakeRegisters::default();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let err = || {
                format!(
                    "line {}: expected \"ADDR REG VALUE\" in hex, got {line:?}",
                    i + 1
                )
            };
            let hex = |s: &str| u32::from_str_radix(s.trim_start_matches("0x"), 16).ok();
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [a, r, v] = fields.as_slice() else {
                return Err(err());
            };
            let (Some(addr), Some(reg), Some(value)) = (hex(a), hex(r), hex(v)) else {
                return Err(err());
            };
            if addr > 0x7f || reg > 0xff || value > 0xffff {
                return Err(err());
            }
            let is_word = value > 0xff || v.trim_start_matches("0x").len() == 4;
            if is_word {
                map.words.insert((addr as u8, reg as u8), value as u16);
            } else {
                map.bytes.insert((addr as u8, reg as u8), value as u8);
            }
        }
        Ok(map)
    }

    pub fn load(path: &Path) -> Result<FakeRegisters, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    fn present(&self, addr: u8) -> bool {
        self.words
            .keys()
            .chain(self.bytes.keys())
            .any(|&(a, _)| a == addr)
    }
}

impl RegisterBus for FakeRegisters {
    fn read_word_be(&mut self, addr: u8, reg: u8) -> Result<u16, Unavailable> {
        if !self.present(addr) {
            return Err(Unavailable::I2cNack);
        }
        self.words
            .get(&(addr, reg))
            .copied()
            .ok_or(Unavailable::Io(std::io::ErrorKind::InvalidData))
    }
    fn read_byte(&mut self, addr: u8, reg: u8) -> Result<u8, Unavailable> {
        if !self.present(addr) {
            return Err(Unavailable::I2cNack);
        }
        self.bytes
            .get(&(addr, reg))
            .copied()
            .ok_or(Unavailable::Io(std::io::ErrorKind::InvalidData))
    }
}

/// rppal's `/dev/i2c-N`.
#[cfg(all(
    feature = "i2c",
    target_os = "linux",
    any(target_arch = "aarch64", target_arch = "arm")
))]
pub struct RppalBus {
    i2c: rppal::i2c::I2c,
    addr: Option<u8>,
}

#[cfg(all(
    feature = "i2c",
    target_os = "linux",
    any(target_arch = "aarch64", target_arch = "arm")
))]
impl RppalBus {
    pub fn open(bus: u8) -> Result<RppalBus, String> {
        rppal::i2c::I2c::with_bus(bus)
            .map(|i2c| RppalBus { i2c, addr: None })
            .map_err(|e| format!("/dev/i2c-{bus}: {e}"))
    }
    fn select(&mut self, addr: u8) -> Result<(), Unavailable> {
        if self.addr != Some(addr) {
            self.i2c
                .set_slave_address(addr as u16)
                .map_err(rppal_reason)?;
            self.addr = Some(addr);
        }
        Ok(())
    }
}

#[cfg(all(
    feature = "i2c",
    target_os = "linux",
    any(target_arch = "aarch64", target_arch = "arm")
))]
fn rppal_reason(e: rppal::i2c::Error) -> Unavailable {
    match e {
        // An absent chip does not acknowledge: the kernel reports ENXIO or EREMOTEIO.
        rppal::i2c::Error::Io(io) if matches!(io.raw_os_error(), Some(6) | Some(121)) => {
            Unavailable::I2cNack
        }
        rppal::i2c::Error::Io(io) => Unavailable::Io(io.kind()),
        _ => Unavailable::Io(std::io::ErrorKind::Other),
    }
}

#[cfg(all(
    feature = "i2c",
    target_os = "linux",
    any(target_arch = "aarch64", target_arch = "arm")
))]
impl RegisterBus for RppalBus {
    fn read_word_be(&mut self, addr: u8, reg: u8) -> Result<u16, Unavailable> {
        self.select(addr)?;
        self.i2c.smbus_read_word_swapped(reg).map_err(rppal_reason)
    }
    fn read_byte(&mut self, addr: u8, reg: u8) -> Result<u8, Unavailable> {
        self.select(addr)?;
        self.i2c.smbus_read_byte(reg).map_err(rppal_reason)
    }
}

/// Opens bus `n`: a fake map under a fake root, the real device otherwise.
pub fn open_bus(sysfs_root: &Path, n: u8) -> Result<Box<dyn RegisterBus>, String> {
    if sysfs_root != Path::new("/") {
        let p = sysfs_root.join(format!("dev/i2c-{n}"));
        if !p.exists() {
            return Err(format!(
                "{}: no fake I2C bus under the sysfs root",
                p.display()
            ));
        }
        return FakeRegisters::load(&p).map(|m| Box::new(m) as Box<dyn RegisterBus>);
    }
    #[cfg(all(
        feature = "i2c",
        target_os = "linux",
        any(target_arch = "aarch64", target_arch = "arm")
    ))]
    {
        RppalBus::open(n).map(|b| Box::new(b) as Box<dyn RegisterBus>)
    }
    #[cfg(not(all(
        feature = "i2c",
        target_os = "linux",
        any(target_arch = "aarch64", target_arch = "arm")
    )))]
    {
        Err(format!(
            "/dev/i2c-{n}: I2C support is not built in (feature `i2c` on ARM Linux)"
        ))
    }
}

/// Which gauge, with its address and conversion parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Gauge {
    Max17048,
    Ina219 { addr: u8, cells: u8 },
    PiSugar3,
}

pub const MAX17048_ADDR: u8 = 0x36;
pub const PISUGAR3_ADDR: u8 = 0x57;
/// Shunt on Waveshare's INA219 UPS HATs.
pub const INA219_SHUNT_OHMS: f64 = 0.1;

impl Gauge {
    pub fn name(&self) -> &'static str {
        match self {
            Gauge::Max17048 => "max17048",
            Gauge::Ina219 { .. } => "ina219",
            Gauge::PiSugar3 => "pisugar3",
        }
    }

    pub fn addr(&self) -> u8 {
        match *self {
            Gauge::Max17048 => MAX17048_ADDR,
            Gauge::Ina219 { addr, .. } => addr,
            Gauge::PiSugar3 => PISUGAR3_ADDR,
        }
    }

    /// Whether this gauge answers and identifies itself. Used by `auto`: a chip that
    /// answers at the address but is something else must not be read as a battery.
    pub fn probe(&self, bus: &mut dyn RegisterBus) -> bool {
        match *self {
            // VERSION register: 0x001_ on MAX17048/49.
            Gauge::Max17048 => bus
                .read_word_be(MAX17048_ADDR, 0x08)
                .is_ok_and(|v| v & 0xfff0 == 0x0010),
            // No ID register: it answers and its bus voltage fits the configured pack.
            Gauge::Ina219 { .. } => self.read(bus).is_ok(),
            Gauge::PiSugar3 => bus.read_byte(PISUGAR3_ADDR, 0x2a).is_ok_and(|p| p <= 100),
        }
    }

    /// Reads and converts one battery sample.
    pub fn read(&self, bus: &mut dyn RegisterBus) -> Result<Battery, Unavailable> {
        match *self {
            Gauge::Max17048 => {
                let vcell = bus.read_word_be(MAX17048_ADDR, 0x02)?;
                let soc = bus.read_word_be(MAX17048_ADDR, 0x04)?;
                let crate_raw = bus.read_word_be(MAX17048_ADDR, 0x16)?;
                let volts = max17048_volts(vcell);
                let percent = super::sysfs::plausible_percent(soc as f64 / 256.0)?;
                let rate = max17048_crate(crate_raw);
                Ok(Battery {
                    percent,
                    status: status_from_rate(rate, percent),
                    voltage_v: Some(volts),
                })
            }
            Gauge::Ina219 { addr, cells } => {
                let bus_raw = bus.read_word_be(addr, 0x02)?;
                let shunt_raw = bus.read_word_be(addr, 0x01)?;
                let volts = ina219_bus_volts(bus_raw);
                let per_cell = volts / cells as f64;
                if !(2.5..=4.5).contains(&per_cell) {
                    return Err(Unavailable::Implausible(volts));
                }
                let amps = ina219_shunt_volts(shunt_raw) / INA219_SHUNT_OHMS;
                let percent = ina219_percent(volts, cells);
                // Waveshare's HATs read positive current while charging.
                // Below 10 mA either way is noise: a Pi draws hundreds.
                let status = if amps < -0.01 {
                    ChargeStatus::Discharging
                } else if amps > 0.01 {
                    ChargeStatus::Charging
                } else if percent >= 99.0 {
                    ChargeStatus::Full
                } else {
                    ChargeStatus::NotCharging
                };
                Ok(Battery {
                    percent,
                    status,
                    voltage_v: Some(volts),
                })
            }
            Gauge::PiSugar3 => {
                let hi = bus.read_byte(PISUGAR3_ADDR, 0x22)?;
                let lo = bus.read_byte(PISUGAR3_ADDR, 0x23)?;
                let pct = bus.read_byte(PISUGAR3_ADDR, 0x2a)?;
                let ctrl = bus.read_byte(PISUGAR3_ADDR, 0x02)?;
                let percent = super::sysfs::plausible_percent(pct as f64)?;
                let millivolts = ((hi as u16) << 8) | lo as u16;
                // CTR1 bit 7: external power connected.
                let status = match (ctrl & 0x80 != 0, percent >= 100.0) {
                    (true, true) => ChargeStatus::Full,
                    (true, false) => ChargeStatus::Charging,
                    (false, _) => ChargeStatus::Discharging,
                };
                Ok(Battery {
                    percent,
                    status,
                    voltage_v: Some(millivolts as f64 / 1000.0),
                })
            }
        }
    }
}

/// MAX17048 VCELL: 78.125 uV per bit.
pub fn max17048_volts(raw: u16) -> f64 {
    raw as f64 * 78.125e-6
}

/// MAX17048 CRATE: signed, 0.208 %/h per bit.
pub fn max17048_crate(raw: u16) -> f64 {
    raw as i16 as f64 * 0.208
}

/// A charge rate within +-0.5 %/h is noise: a Pi draws far more than that from a HAT cell.
fn status_from_rate(percent_per_hour: f64, percent: f64) -> ChargeStatus {
    if percent_per_hour <= -0.5 {
        ChargeStatus::Discharging
    } else if percent_per_hour >= 0.5 {
        ChargeStatus::Charging
    } else if percent >= 99.0 {
        ChargeStatus::Full
    } else {
        ChargeStatus::NotCharging
    }
}

/// INA219 bus voltage register: bits 15..3, 4 mV per bit.
pub fn ina219_bus_volts(raw: u16) -> f64 {
    (raw >> 3) as f64 * 0.004
}

/// INA219 shunt voltage register: signed, 10 uV per bit.
pub fn ina219_shunt_volts(raw: u16) -> f64 {
    i16::from_be_bytes(raw.to_be_bytes()) as f64 * 10e-6
}

/// Linear charge estimate from pack voltage: 3.0-4.2 V per cell.
pub fn ina219_percent(volts: f64, cells: u8) -> f64 {
    let cells = cells.max(1) as f64;
    (((volts - 3.0 * cells) / (1.2 * cells)) * 100.0).clamp(0.0, 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// MAX17048 datasheet worked values: VCELL 0xD000 = 53248 * 78.125 uV = 4.16 V;
    /// SOC 0x5A80 = 90.5 %; CRATE 0xFF9C = -100 * 0.208 = -20.8 %/h (discharging).
    fn max17048_map() -> FakeRegisters {
        FakeRegisters::default()
            .word(0x36, 0x08, 0x0012)
            .word(0x36, 0x02, 0xD000)
            .word(0x36, 0x04, 0x5A80)
            .word(0x36, 0x16, 0xFF9C)
    }

    #[test]
    fn max17048_conversions() {
        let mut bus = max17048_map();
        let g = Gauge::Max17048;
        assert!(g.probe(&mut bus));
        let b = g.read(&mut bus).unwrap();
        assert!((b.voltage_v.unwrap() - 4.16).abs() < 1e-9);
        assert!((b.percent - 90.5).abs() < 1e-9);
        assert_eq!(b.status, ChargeStatus::Discharging);
        // Charging at +10.4 %/h.
        let mut bus = max17048_map().word(0x36, 0x16, 50);
        assert_eq!(g.read(&mut bus).unwrap().status, ChargeStatus::Charging);
        // SOC 0xB400 = 180 %: implausible, not a battery reading.
        let mut bus = max17048_map().word(0x36, 0x04, 0xB400);
        assert_eq!(g.read(&mut bus), Err(Unavailable::Implausible(180.0)));
    }

    #[test]
    fn max17048_absent_does_not_acknowledge() {
        let mut bus = FakeRegisters::default();
        assert!(!Gauge::Max17048.probe(&mut bus));
        assert_eq!(Gauge::Max17048.read(&mut bus), Err(Unavailable::I2cNack));
        // Something else at 0x36 with a different version register is not taken for one.
        let mut bus = FakeRegisters::default().word(0x36, 0x08, 0x1234);
        assert!(!Gauge::Max17048.probe(&mut bus));
    }

    /// INA219 worked values (Waveshare UPS HAT, 2S pack, 0.1 ohm shunt): bus register
    /// 0x3E80 -> (0x3E80 >> 3) * 4 mV = 2000 * 4 mV = 8.0 V; shunt 0xFF38 = -200 * 10 uV
    /// = -2 mV -> -20 mA (discharging); charge (8.0 - 6.0) / 2.4 = 83.3 %.
    #[test]
    fn ina219_conversions() {
        let g = Gauge::Ina219 {
            addr: 0x42,
            cells: 2,
        };
        let mut bus = FakeRegisters::default()
            .word(0x42, 0x02, 0x3E80)
            .word(0x42, 0x01, 0xFF38);
        let b = g.read(&mut bus).unwrap();
        assert!((b.voltage_v.unwrap() - 8.0).abs() < 1e-9);
        assert!((b.percent - 83.333).abs() < 0.01, "{}", b.percent);
        assert_eq!(b.status, ChargeStatus::Discharging);
        assert!((ina219_shunt_volts(0xFF38) + 0.002).abs() < 1e-12);
        // 1S at 3.6 V: (3.6 - 3.0) / 1.2 = 50 %. 3.6 V = 900 * 4 mV -> raw 900 << 3.
        let g1 = Gauge::Ina219 {
            addr: 0x43,
            cells: 1,
        };
        let mut bus = FakeRegisters::default()
            .word(0x43, 0x02, 900 << 3)
            .word(0x43, 0x01, 0x0100);
        let b = g1.read(&mut bus).unwrap();
        assert!((b.percent - 50.0).abs() < 1e-9);
        assert_eq!(b.status, ChargeStatus::Charging);
        // 2S reading on a 1S config: 8 V per cell is implausible.
        let mut bus = FakeRegisters::default()
            .word(0x43, 0x02, 0x3E80)
            .word(0x43, 0x01, 0);
        assert_eq!(g1.read(&mut bus), Err(Unavailable::Implausible(8.0)));
        assert!(!g1.probe(&mut bus));
    }

    /// PiSugar 3: 0x22/0x23 = 0x0F, 0xA0 -> 4000 mV; 0x2A = 76 %; CTR1 bit 7 clear = on battery.
    #[test]
    fn pisugar3_conversions() {
        let map = FakeRegisters::default()
            .byte(0x57, 0x22, 0x0F)
            .byte(0x57, 0x23, 0xA0)
            .byte(0x57, 0x2a, 76)
            .byte(0x57, 0x02, 0x40);
        let g = Gauge::PiSugar3;
        let mut bus = map.clone();
        assert!(g.probe(&mut bus));
        let b = g.read(&mut bus).unwrap();
        assert_eq!(b.voltage_v, Some(4.0));
        assert_eq!(b.percent, 76.0);
        assert_eq!(b.status, ChargeStatus::Discharging);
        let mut bus = map.byte(0x57, 0x02, 0xC0);
        assert_eq!(g.read(&mut bus).unwrap().status, ChargeStatus::Charging);
    }

    #[test]
    fn text_register_maps() {
        let m = FakeRegisters::parse(
            "# gauge\n0x36 0x02 0xd000\n0x36 0x08 0x0012 # version\n0x57 0x2a 0x4c\n",
        )
        .unwrap();
        assert_eq!(
            m,
            FakeRegisters::default()
                .word(0x36, 0x02, 0xd000)
                .word(0x36, 0x08, 0x12)
                .byte(0x57, 0x2a, 0x4c)
        );
        let e = FakeRegisters::parse("0x36 0x02\n").unwrap_err();
        assert!(e.starts_with("line 1:"), "{e}");
        assert!(FakeRegisters::parse("0x99 0x02 0x1\n").is_err());
    }
}
