//! Server CPU accounting: the CPU time (user + system) of the gateway
//! processes named by `--server-pid`, read from `/proc/<pid>/stat` at the
//! start and the end of the measured window, so a run can report server CPU
//! microseconds per delivery next to throughput and latency; and of the
//! Redis servers named by `--redis-pid`, per accepted publish.

use std::time::Duration;

/// Clock ticks per second of `/proc/<pid>/stat` (`getconf CLK_TCK`; 100 on
/// every Linux build this runs on, the fallback).
fn ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .filter(|&ticks| ticks > 0)
        .unwrap_or(100)
}

/// `utime + stime` of a `/proc/<pid>/stat` line, in ticks. The command name
/// (field 2) may hold spaces and parentheses, so fields are counted after
/// its closing parenthesis.
pub fn parse_stat(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime 14, stime 15 (1-based).
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// CPU time used so far by the processes, summed; `None` when one cannot
/// be read (it exited, or this is not Linux).
pub fn cpu_time(pids: &[u32]) -> Option<Duration> {
    cpu_times(pids).into_iter().sum()
}

/// CPU time used so far by each process (all its threads), in order;
/// `None` for one that cannot be read.
pub fn cpu_times(pids: &[u32]) -> Vec<Option<Duration>> {
    let per_second = ticks_per_second();
    pids.iter()
        .map(|pid| {
            let ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| parse_stat(&stat))?;
            Some(Duration::from_micros(ticks * 1_000_000 / per_second))
        })
        .collect()
}

/// What each process used between two readings of [`cpu_times`].
pub fn used(before: &[Option<Duration>], after: &[Option<Duration>]) -> Vec<Option<Duration>> {
    before
        .iter()
        .zip(after)
        .map(|(b, a)| a.as_ref()?.checked_sub((*b)?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_utime_and_stime_past_a_tricky_name() {
        let stat =
            "4242 (sw (1) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 9 0 123 456 789";
        assert_eq!(parse_stat(stat), Some(325));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn usage_is_per_process_and_none_when_unreadable() {
        let ms = |n| Some(Duration::from_millis(n));
        let used = used(&[ms(10), None, ms(5)], &[ms(25), ms(3), None]);
        assert_eq!(used, vec![ms(15), None, None]);
    }

    #[test]
    fn this_process_has_a_cpu_time() {
        assert!(cpu_time(&[std::process::id()]).is_some());
        assert!(cpu_time(&[u32::MAX]).is_none());
    }
}
