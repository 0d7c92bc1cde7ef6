//! File descriptors: every connection holds one, and so do log segments,
//! sinks, archive connections and reads. The broker raises its soft limit
//! to the hard one at start and never admits more connections than leave
//! room for the rest, so that running out of descriptors cannot make the
//! log unwritable (a failed segment roll refuses every publish).

#![allow(unsafe_code)]

use crate::limits::FD_RESERVE as RESERVE;

/// The connections the broker admits: `configured`, or fewer when the
/// process's descriptor limit (raised to its hard limit first) cannot hold
/// them and the reserve.
pub fn connections_allowed(configured: usize) -> usize {
    let limit = raise_limit();
    let room = usize::try_from(limit.saturating_sub(RESERVE)).unwrap_or(usize::MAX);
    if room < configured {
        tracing::warn!(
            configured,
            admitted = room,
            fd_limit = limit,
            "the file descriptor limit cannot hold --max-connections and the broker's own files: \
             admitting fewer connections (raise `ulimit -n` to admit more)"
        );
        return room.max(1);
    }
    configured
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the soft
/// limit in force.
fn raise_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own; no other effect.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return u64::MAX;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we own; raising the soft limit
        // up to the hard one needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    lim.rlim_cur
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_leave_room_for_the_reserve() {
        let limit = raise_limit();
        assert!(connections_allowed(usize::MAX) as u64 <= limit.saturating_sub(RESERVE).max(1));
        assert_eq!(connections_allowed(10), 10);
    }
}
