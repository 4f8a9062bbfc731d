//! Signing in, sessions and CSRF tokens, and the lock-out.
//!
//! A session is 32 random bytes (hex) in a cookie, held in memory: a restart signs every
//! operator out, which a console can afford. Each session has its own CSRF token, which
//! every form carries and every `POST` must bring back. An address that fails to sign in
//! [`MOST_FAILURES`] times within [`LOCK_OUT`] is refused until the oldest failure is that
//! old, and so is everyone once [`MOST_FAILURES_IN_ALL`] failures fall within it, so
//! that guessing from many addresses is as slow.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// The session cookie's name.
pub(crate) const COOKIE: &str = "shortlinks_console";
/// A session unused this long is closed.
pub(crate) const IDLE: Duration = Duration::from_secs(8 * 3600);
/// Failed sign-ins an address may make within [`LOCK_OUT`].
pub(crate) const MOST_FAILURES: usize = 5;
/// Failed sign-ins from all addresses within [`LOCK_OUT`].
pub(crate) const MOST_FAILURES_IN_ALL: usize = 20;
/// How long a failure counts.
pub(crate) const LOCK_OUT: Duration = Duration::from_secs(15 * 60);
/// Open sessions at most: the oldest goes first.
const MOST_SESSIONS: usize = 64;

struct Session {
    csrf: String,
    last_seen: Instant,
}

/// Open sessions and recent failures.
#[derive(Default)]
pub(crate) struct Sessions {
    open: Mutex<HashMap<String, Session>>,
    failures: Mutex<Vec<(IpAddr, Instant)>>,
}

/// 32 random bytes, as hex.
fn random_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).expect("the system's random source");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compared as hashes: the time taken says nothing of where two tokens differ.
fn same(a: &str, b: &str) -> bool {
    blake3::hash(a.as_bytes()) == blake3::hash(b.as_bytes())
}

impl Sessions {
    /// How long `who` must wait before trying again, if it must.
    pub(crate) fn locked_out(&self, who: IpAddr, now: Instant) -> Option<Duration> {
        let mut failures = self.failures.lock();
        failures.retain(|(_, at)| now.duration_since(*at) < LOCK_OUT);
        let theirs: Vec<Instant> = failures.iter().filter(|(a, _)| *a == who).map(|(_, at)| *at).collect();
        let counted = match (theirs.len() >= MOST_FAILURES, failures.len() >= MOST_FAILURES_IN_ALL) {
            (true, _) => theirs,
            (false, true) => failures.iter().map(|(_, at)| *at).collect(),
            (false, false) => return None,
        };
        counted.iter().min().map(|oldest| LOCK_OUT.saturating_sub(now.duration_since(*oldest)))
    }

    /// Counts a failed sign-in from `who`.
    pub(crate) fn failed(&self, who: IpAddr, now: Instant) {
        self.failures.lock().push((who, now));
    }

    /// Opens a session: its id (the cookie) and its CSRF token.
    pub(crate) fn open(&self, now: Instant) -> (String, String) {
        let (id, csrf) = (random_token(), random_token());
        let mut open = self.open.lock();
        open.retain(|_, s| now.duration_since(s.last_seen) < IDLE);
        if open.len() >= MOST_SESSIONS {
            if let Some(oldest) = open.iter().min_by_key(|(_, s)| s.last_seen).map(|(id, _)| id.clone()) {
                open.remove(&oldest);
            }
        }
        open.insert(id.clone(), Session { csrf: csrf.clone(), last_seen: now });
        (id, csrf)
    }

    /// The CSRF token of the session `id`, if it is open (and now seen again).
    pub(crate) fn csrf(&self, id: &str, now: Instant) -> Option<String> {
        let mut open = self.open.lock();
        let key = open.keys().find(|key| same(key, id))?.clone();
        let session = open.get_mut(&key)?;
        if now.duration_since(session.last_seen) >= IDLE {
            open.remove(&key);
            return None;
        }
        session.last_seen = now;
        Some(session.csrf.clone())
    }

    /// Whether `presented` is the session's CSRF token.
    pub(crate) fn csrf_matches(expected: &str, presented: Option<&str>) -> bool {
        presented.is_some_and(|p| same(expected, p))
    }

    /// Closes the session `id`.
    pub(crate) fn close(&self, id: &str) {
        self.open.lock().retain(|key, _| !same(key, id));
    }
}

/// The session id in a request's `Cookie` headers.
pub(crate) fn session_id(cookies: impl Iterator<Item = impl AsRef<[u8]>>) -> Option<String> {
    cookies.filter_map(|header| std::str::from_utf8(header.as_ref()).ok().map(str::to_owned)).find_map(|header| {
        header.split(';').find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE).then(|| value.to_owned())
        })
    })
}

/// The `Set-Cookie` value for a session: never readable by a script, never sent from
/// another site, and only over TLS when the console is reached over TLS.
pub(crate) fn cookie(id: &str, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict{secure}")
}

/// The `Set-Cookie` value that ends a session in the browser.
pub(crate) fn cleared_cookie() -> String {
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_locked_out_after_five_failures_until_the_first_is_old() {
        let sessions = Sessions::default();
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let start = Instant::now();
        for i in 0..MOST_FAILURES as u64 {
            assert_eq!(sessions.locked_out(a, start), None, "after {i}");
            sessions.failed(a, start + Duration::from_secs(i));
        }
        let later = start + Duration::from_secs(60);
        assert_eq!(sessions.locked_out(a, later), Some(LOCK_OUT - Duration::from_secs(60)));
        assert_eq!(sessions.locked_out(b, later), None, "another address is not");
        assert_eq!(sessions.locked_out(a, start + LOCK_OUT + Duration::from_secs(1)), None, "its failures aged");
    }

    #[test]
    fn many_addresses_together_are_locked_out_too() {
        let sessions = Sessions::default();
        let now = Instant::now();
        for i in 0..MOST_FAILURES_IN_ALL {
            sessions.failed(IpAddr::from([10, 0, (i / 256) as u8, i as u8]), now);
        }
        assert!(sessions.locked_out("192.0.2.9".parse().unwrap(), now).is_some());
    }

    #[test]
    fn a_session_has_its_own_csrf_token_and_ends_when_closed_or_idle() {
        let sessions = Sessions::default();
        let now = Instant::now();
        let (id, csrf) = sessions.open(now);
        let (other, other_csrf) = sessions.open(now);
        assert_ne!((&id, &csrf), (&other, &other_csrf));
        assert_eq!(sessions.csrf(&id, now).as_deref(), Some(csrf.as_str()));
        assert!(Sessions::csrf_matches(&csrf, Some(&csrf)));
        assert!(!Sessions::csrf_matches(&csrf, Some(&other_csrf)) && !Sessions::csrf_matches(&csrf, None));
        assert_eq!(sessions.csrf("made-up", now), None);
        sessions.close(&id);
        assert_eq!(sessions.csrf(&id, now), None);
        assert_eq!(sessions.csrf(&other, now + IDLE), None, "idle too long");
    }

    #[test]
    fn the_cookie_is_found_among_others_and_set_strictly() {
        let headers = ["a=1; shortlinks_console=abc; b=2"];
        assert_eq!(session_id(headers.iter()), Some("abc".into()));
        assert_eq!(session_id(["x=1"].iter()), None);
        assert_eq!(cookie("abc", false), "shortlinks_console=abc; Path=/; HttpOnly; SameSite=Strict");
        assert!(cookie("abc", true).ends_with("; Secure"));
    }
}
