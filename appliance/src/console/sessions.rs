//! Console sessions and the throttle on failed logins, both in memory: a restart of the daemon
//! ends every session and forgets the failures.
//!
//! A session is named by 32 random bytes from the OS (64 hex digits, the cookie's value); the
//! table keys it by the SHA-256 of that value, so neither a lookup's timing nor a memory dump
//! gives a usable token. Each session has its own CSRF token (32 random bytes) that every form
//! carries in a hidden field, and ends after `session_idle_seconds` without a request or
//! `session_max_hours` after the login, whichever comes first.

use super::users::Role;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Most sessions at once; the least recently used goes first.
const MAX_SESSIONS: usize = 1000;
/// Most user names and addresses with recorded failures kept at once.
const MAX_TRACKED: usize = 10_000;

/// 32 random bytes from the OS as 64 hex digits.
pub fn random_token() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Whether `a` and `b` are equal, in a time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn token_key(token: &str) -> Option<[u8; 32]> {
    (token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| Sha256::digest(token.as_bytes()).into())
}

/// One logged-in user.
#[derive(Debug, Clone)]
pub struct Session {
    pub user: String,
    pub role: Role,
    pub csrf: String,
    /// The password hash the user logged in with: a new password ends the session.
    pub password: String,
    created: Instant,
    last_seen: Instant,
}

pub struct Sessions {
    by_key: HashMap<[u8; 32], Session>,
    idle: Duration,
    max_age: Duration,
}

impl Sessions {
    pub fn new(idle: Duration, max_age: Duration) -> Sessions {
        Sessions {
            by_key: HashMap::new(),
            idle,
            max_age,
        }
    }

    /// Open a session for `user`; returns its token (the cookie's value).
    pub fn create(
        &mut self,
        user: &str,
        role: Role,
        password: &str,
        now: Instant,
    ) -> Result<(String, Session), getrandom::Error> {
        self.sweep(now);
        if self.by_key.len() >= MAX_SESSIONS {
            if let Some(oldest) = self
                .by_key
                .iter()
                .min_by_key(|(_, s)| s.last_seen)
                .map(|(k, _)| *k)
            {
                self.by_key.remove(&oldest);
            }
        }
        let token = random_token()?;
        let session = Session {
            user: user.to_string(),
            role,
            csrf: random_token()?,
            password: password.to_string(),
            created: now,
            last_seen: now,
        };
        if let Some(key) = token_key(&token) {
            self.by_key.insert(key, session.clone());
        }
        Ok((token, session))
    }

    /// The live session named by `token`, marked as seen `now`; `None` for a token that is
    /// malformed, unknown, idle too long or too old (which also removes it).
    pub fn touch(&mut self, token: &str, now: Instant) -> Option<Session> {
        let key = token_key(token)?;
        let (idle, max_age) = (self.idle, self.max_age);
        let session = self.by_key.get_mut(&key)?;
        if expired(session, idle, max_age, now) {
            self.by_key.remove(&key);
            return None;
        }
        session.last_seen = now;
        Some(session.clone())
    }

    /// End the session named by `token` (logout, or a user who changed).
    pub fn remove(&mut self, token: &str) {
        if let Some(key) = token_key(token) {
            self.by_key.remove(&key);
        }
    }

    fn sweep(&mut self, now: Instant) {
        let (idle, max_age) = (self.idle, self.max_age);
        self.by_key.retain(|_, s| !expired(s, idle, max_age, now));
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

fn expired(s: &Session, idle: Duration, max_age: Duration, now: Instant) -> bool {
    now.saturating_duration_since(s.last_seen) > idle
        || now.saturating_duration_since(s.created) > max_age
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    first: Instant,
}

/// Failed logins per user name and per client address within a window: at `max_per_user`
/// failures for a name (or four times that from one address) further attempts are refused,
/// right password or not, until the window since the first failure has passed. A successful
/// login clears its user's count (not its address's).
pub struct Throttle {
    max_per_user: u32,
    window: Duration,
    users: HashMap<String, Failures>,
    addresses: HashMap<IpAddr, Failures>,
}

impl Throttle {
    pub fn new(max_per_user: u32, window: Duration) -> Throttle {
        Throttle {
            max_per_user,
            window,
            users: HashMap::new(),
            addresses: HashMap::new(),
        }
    }

    fn max_per_address(&self) -> u32 {
        self.max_per_user.saturating_mul(4)
    }

    /// How long `user` from `address` must still wait, when refused now.
    pub fn refused(&mut self, user: &str, address: IpAddr, now: Instant) -> Option<Duration> {
        self.sweep(now);
        let wait = |f: &Failures, max: u32| {
            (f.count >= max).then(|| {
                self.window
                    .saturating_sub(now.saturating_duration_since(f.first))
            })
        };
        let by_user = self
            .users
            .get(user)
            .and_then(|f| wait(f, self.max_per_user));
        let by_address = self
            .addresses
            .get(&address)
            .and_then(|f| wait(f, self.max_per_address()));
        by_user.into_iter().chain(by_address).max()
    }

    pub fn failed(&mut self, user: &str, address: IpAddr, now: Instant) {
        self.sweep(now);
        if self.users.len() + self.addresses.len() >= MAX_TRACKED {
            // Keep the names and addresses that are refused; forget the others.
            let (user_max, address_max) = (self.max_per_user, self.max_per_address());
            self.users.retain(|_, f| f.count >= user_max);
            self.addresses.retain(|_, f| f.count >= address_max);
        }
        let bump = |f: &mut Failures| f.count = f.count.saturating_add(1);
        let fresh = Failures {
            count: 0,
            first: now,
        };
        bump(self.users.entry(user.to_string()).or_insert(fresh));
        bump(self.addresses.entry(address).or_insert(fresh));
    }

    pub fn succeeded(&mut self, user: &str) {
        self.users.remove(user);
    }

    fn sweep(&mut self, now: Instant) {
        let window = self.window;
        self.users
            .retain(|_, f| now.saturating_duration_since(f.first) < window);
        self.addresses
            .retain(|_, f| now.saturating_duration_since(f.first) < window);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_ends_after_its_idle_time_and_a_forged_token_names_none() {
        let mut sessions = Sessions::new(Duration::from_secs(60), Duration::from_secs(3600));
        let t0 = Instant::now();
        let (token, s) = sessions.create("ana", Role::Admin, "h", t0).unwrap();
        assert_eq!(token.len(), 64);
        assert_ne!(token, s.csrf);
        assert!(sessions
            .touch(&token, t0 + Duration::from_secs(59))
            .is_some());
        // Seen at 59 s: idle is counted from there.
        assert!(sessions
            .touch(&token, t0 + Duration::from_secs(100))
            .is_some());
        assert!(sessions
            .touch(&token, t0 + Duration::from_secs(161))
            .is_none());
        assert!(sessions.is_empty());
        let (token, _) = sessions.create("ana", Role::Admin, "h", t0).unwrap();
        let mut forged = token.clone().into_bytes();
        forged[0] = if forged[0] == b'a' { b'b' } else { b'a' };
        assert!(sessions
            .touch(&String::from_utf8(forged).unwrap(), t0)
            .is_none());
        assert!(sessions.touch("not hex", t0).is_none());
        sessions.remove(&token);
        assert!(sessions.touch(&token, t0).is_none());
    }

    #[test]
    fn a_session_ends_at_its_maximum_age_however_busy() {
        let mut sessions = Sessions::new(Duration::from_secs(60), Duration::from_secs(120));
        let t0 = Instant::now();
        let (token, _) = sessions.create("ana", Role::Viewer, "h", t0).unwrap();
        for s in (30..=120).step_by(30) {
            assert!(sessions
                .touch(&token, t0 + Duration::from_secs(s))
                .is_some());
        }
        assert!(sessions
            .touch(&token, t0 + Duration::from_secs(121))
            .is_none());
    }

    #[test]
    fn failed_logins_lock_the_user_until_the_window_passes_and_the_address_at_four_times_that() {
        let mut throttle = Throttle::new(3, Duration::from_secs(600));
        let (a, b) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(throttle.refused("ana", a, t0).is_none());
            throttle.failed("ana", a, t0);
        }
        // The user is refused from any address; another user from that address is not.
        assert!(throttle.refused("ana", b, t0).is_some());
        assert!(throttle.refused("bob", a, t0).is_none());
        assert!(throttle
            .refused("ana", b, t0 + Duration::from_secs(601))
            .is_none());
        for i in 0..12 {
            throttle.failed(&format!("u{i}"), b, t0);
        }
        assert!(throttle.refused("someone", b, t0).is_some());
        throttle.succeeded("u0");
        assert!(
            throttle.refused("u0", b, t0).is_some(),
            "the address stays refused"
        );
    }
}
