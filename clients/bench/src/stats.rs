//! Result formatting and percentiles.

use std::time::Duration;

/// Throughput of one run.
#[derive(Debug, Clone, Copy)]
pub struct Throughput {
    /// Messages received (over all subscribers).
    pub messages: u64,
    /// Payload bytes received.
    pub bytes: u64,
    /// From the first to the last message received.
    pub elapsed: Duration,
    /// CPU time the server used during the run.
    pub server_cpu: Duration,
    /// CPU time this process (the publisher and the subscribers) used.
    pub client_cpu: Duration,
}

impl Throughput {
    /// Messages per second.
    pub fn rate(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64()
    }

    /// Server CPU microseconds per message received.
    pub fn cpu_per_message(&self) -> f64 {
        self.server_cpu.as_secs_f64() * 1e6 / self.messages.max(1) as f64
    }

    /// Client CPU microseconds (publisher and subscribers together) per
    /// message received.
    pub fn client_cpu_per_message(&self) -> f64 {
        self.client_cpu.as_secs_f64() * 1e6 / self.messages.max(1) as f64
    }

    /// Payload megabytes per second.
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64() / 1e6
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Samples.
    pub samples: usize,
}

impl Latency {
    /// Percentiles of `nanos` (sorted in place).
    pub fn from_nanos(nanos: &mut [u64]) -> Latency {
        nanos.sort_unstable();
        let at = |q: f64| {
            if nanos.is_empty() {
                return f64::NAN;
            }
            let i = ((nanos.len() as f64 - 1.0) * q).round() as usize;
            nanos[i] as f64 / 1000.0
        };
        Latency {
            p50: at(0.50),
            p99: at(0.99),
            p999: at(0.999),
            samples: nanos.len(),
        }
    }
}
