//! The standard `process_*` metrics (as Prometheus' client libraries name
//! them, so node and pod dashboards apply), read from `/proc/self` at each
//! scrape. On a system without `/proc` they are simply absent.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

/// What `/proc/self` says about this process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub start_time_seconds: f64,
    pub open_fds: u64,
    pub threads: u64,
}

/// The kernel's clock ticks per second (`getconf CLK_TCK`): 100 on every
/// Linux Kubernetes runs on.
const TICKS_PER_SECOND: f64 = 100.0;
const PAGE_SIZE: u64 = 4096;

impl ProcessStats {
    /// Reads `/proc/self/stat`, `/proc/stat` (boot time) and `/proc/self/fd`.
    pub fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let boot = std::fs::read_to_string("/proc/stat").ok()?;
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
        Self::parse(&stat, &boot, open_fds)
    }

    /// `stat` is `/proc/self/stat`, `boot` is `/proc/stat`.
    pub fn parse(stat: &str, boot: &str, open_fds: u64) -> Option<Self> {
        // The command name (field 2) is in parentheses and may hold spaces:
        // fields are counted after its closing parenthesis, from field 3.
        let after = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = after.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
        let boot_time = boot.lines().find_map(|l| l.strip_prefix("btime "))?.trim().parse::<u64>().ok()?;
        Some(ProcessStats {
            cpu_seconds: (field(14)? + field(15)?) as f64 / TICKS_PER_SECOND,
            threads: field(20)?,
            start_time_seconds: boot_time as f64 + field(22)? as f64 / TICKS_PER_SECOND,
            virtual_bytes: field(23)?,
            resident_bytes: field(24)?.saturating_mul(PAGE_SIZE),
            open_fds,
        })
    }
}

/// Encodes [`ProcessStats`] at each scrape.
#[derive(Debug, Default)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(stats) = ProcessStats::read() else { return Ok(()) };
        let cpu = ConstCounter::new(stats.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu",
            "Total user and system CPU time spent in seconds",
            Some(&Unit::Seconds),
            cpu.metric_type(),
        )?)?;
        let gauges: [(&str, &str, Option<Unit>, f64); 5] = [
            (
                "process_resident_memory",
                "Resident memory size in bytes",
                Some(Unit::Bytes),
                stats.resident_bytes as f64,
            ),
            ("process_virtual_memory", "Virtual memory size in bytes", Some(Unit::Bytes), stats.virtual_bytes as f64),
            (
                "process_start_time",
                "Start time of the process since unix epoch in seconds",
                Some(Unit::Seconds),
                stats.start_time_seconds,
            ),
            ("process_open_fds", "Number of open file descriptors", None, stats.open_fds as f64),
            ("process_threads", "Number of OS threads in the process", None, stats.threads as f64),
        ];
        for (name, help, unit, value) in gauges {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, unit.as_ref(), gauge.metric_type())?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_read_with_spaces_in_the_command_name() {
        // Fields after the command: state ppid pgrp session tty tpgid flags
        // minflt cminflt majflt cmajflt utime stime cutime cstime priority
        // nice threads itrealvalue starttime vsize rss …
        let stat = "4242 (idsync (op) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 7 0 1000 123456789 2048 18446744073709551615";
        let boot = "cpu  1 2 3\nbtime 1700000000\nprocesses 5\n";
        let stats = ProcessStats::parse(stat, boot, 12).expect("parses");
        assert_eq!(stats.cpu_seconds, 3.0);
        assert_eq!(stats.threads, 7);
        assert_eq!(stats.start_time_seconds, 1_700_000_010.0);
        assert_eq!(stats.virtual_bytes, 123_456_789);
        assert_eq!(stats.resident_bytes, 2048 * 4096);
        assert_eq!(stats.open_fds, 12);
    }

    #[test]
    fn this_process_reads() {
        let stats = ProcessStats::read().expect("/proc/self on Linux");
        assert!(stats.resident_bytes > 0 && stats.open_fds > 0 && stats.start_time_seconds > 1.0e9);
    }
}
