//! Where a tensor's storage lives.

/// A compute device. `Cuda(n)` exists in every build; without the `cuda` feature (or a driver)
/// asking for it returns [`Error::DeviceUnavailable`](crate::Error::DeviceUnavailable).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Device {
    #[default]
    Cpu,
    Cuda(usize),
}

impl Device {
    pub fn is_cpu(self) -> bool {
        matches!(self, Device::Cpu)
    }

    pub fn is_cuda(self) -> bool {
        matches!(self, Device::Cuda(_))
    }

    /// Devices this build can use on this machine.
    pub fn available() -> Vec<Device> {
        #[allow(unused_mut)]
        let mut out = vec![Device::Cpu];
        #[cfg(feature = "cuda")]
        out.extend((0..crate::cuda::device_count()).filter(|&n| crate::cuda::is_available(n)).map(Device::Cuda));
        out
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl std::str::FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(|| format!("unknown device `{s}` (expected cpu, cuda or cuda:N)")),
        }
    }
}
