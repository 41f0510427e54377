//! The console's local accounts: `<data_dir>/console/users.toml`, one `[[user]]` table per
//! account with its name, its role (`viewer` or `admin`) and its password as an Argon2id PHC
//! string (`$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`, OWASP's minimum parameters; the
//! parameters travel in the string, so stronger ones can be set later without a migration).
//! No password is ever stored or logged in clear.
//!
//! The file is written only by [`set_password`] and [`remove_user`] (the CLI), durably
//! (temporary file, fdatasync, rename, directory fsync) under `console/users.lock`, in a folder
//! only the appliance's user may read (0700). The console reads it at every login and every
//! request, so a change takes effect without a restart: a removed user's sessions end at
//! their next request, a new role applies at once, and a new password ends the sessions that
//! were opened with the old one.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Largest users file read.
const MAX_USERS_BYTES: u64 = 1 << 20;
/// Shortest password [`set_password`] accepts.
pub const MIN_PASSWORD_CHARS: usize = 12;
/// Longest password hashed (a bound on the work one login attempt costs).
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// Most accounts in one file.
const MAX_USERS: usize = 1000;

/// What a user may do: a viewer reads every page; an admin also changes things (rollback).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = UsersError;
    fn from_str(s: &str) -> Result<Role, UsersError> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "admin" => Ok(Role::Admin),
            other => Err(UsersError::Role(other.to_string())),
        }
    }
}

/// One account as the file holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: String,
    pub role: Role,
    /// Argon2id PHC string.
    pub password: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    #[serde(default, rename = "user")]
    users: Vec<User>,
}

#[derive(Debug, Error)]
pub enum UsersError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is larger than {MAX_USERS_BYTES} bytes", path.display())]
    TooLarge { path: PathBuf },
    #[error("{}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("{}: user[{index}]: {reason}", path.display())]
    Invalid {
        path: PathBuf,
        index: usize,
        reason: String,
    },
    #[error("user name {0:?}: 1 to 64 characters of letters, digits, '.', '_', '-' and '@'")]
    Name(String),
    #[error("role {0:?}: must be \"viewer\" or \"admin\"")]
    Role(String),
    #[error(
        "the password must have at least {MIN_PASSWORD_CHARS} characters and at most \
         {MAX_PASSWORD_BYTES} bytes"
    )]
    Password,
    #[error("{} holds {MAX_USERS} users already", path.display())]
    Full { path: PathBuf },
    #[error("another change to the console's users is being written ({} is locked)", path.display())]
    Locked { path: PathBuf },
    #[error("cannot write {}: {reason}", path.display())]
    Write { path: PathBuf, reason: String },
    #[error("cannot hash the password: {0}")]
    Hash(String),
}

/// Whether [`set_password`] added an account or changed one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Created,
    Updated,
}

/// The users file of `data_dir`.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("console").join("users.toml")
}

/// Whether `name` may name an account.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'))
}

/// Every account of `data_dir` (none when the file does not exist). A file that cannot be
/// read, or an account with a bad name, a duplicate name or a password that is not an
/// Argon2id PHC string, is an error naming it: never an account let in by default.
pub fn load(data_dir: &Path) -> Result<Vec<User>, UsersError> {
    let path = path(data_dir);
    let read = |source| UsersError::Read {
        path: path.clone(),
        source,
    };
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(read(e)),
    };
    let mut text = String::new();
    file.take(MAX_USERS_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(read)?;
    if text.len() as u64 > MAX_USERS_BYTES {
        return Err(UsersError::TooLarge { path });
    }
    let parsed: UsersFile = toml::from_str(&text).map_err(|e| UsersError::Parse {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let mut seen = std::collections::HashSet::new();
    for (index, user) in parsed.users.iter().enumerate() {
        let invalid = |reason: String| UsersError::Invalid {
            path: path.clone(),
            index,
            reason,
        };
        if !valid_name(&user.name) {
            return Err(invalid(format!(
                "name {:?} is not a valid user name",
                user.name
            )));
        }
        if !seen.insert(user.name.as_str()) {
            return Err(invalid(format!("name {:?} is listed twice", user.name)));
        }
        check_phc(&user.password).map_err(invalid)?;
    }
    if parsed.users.len() > MAX_USERS {
        return Err(UsersError::Full { path });
    }
    Ok(parsed.users)
}

/// An Argon2id PHC string, or why not.
fn check_phc(phc: &str) -> Result<(), String> {
    let hash = PasswordHash::new(phc).map_err(|e| format!("password is not a PHC string: {e}"))?;
    if hash.algorithm.as_str() != "argon2id" {
        return Err(format!(
            "password is hashed with {}, not argon2id",
            hash.algorithm
        ));
    }
    if hash.hash.is_none() {
        return Err("password PHC string has no hash".into());
    }
    Ok(())
}

/// Hash `password` with Argon2id and a fresh 16-byte salt from the OS.
pub fn hash_password(password: &str) -> Result<String, UsersError> {
    let mut salt = [0u8; 16];
    getrandom::getrandom(&mut salt).map_err(|e| UsersError::Hash(e.to_string()))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| UsersError::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| UsersError::Hash(e.to_string()))
}

/// A hash no password matches in practice, checked when the user name is unknown so that a
/// login takes as long whether the account exists or not.
fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| {
        hash_password("decoy: no account has this password")
            .unwrap_or_else(|_| "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$aGFzaA".into())
    })
}

/// Whether `password` is the password of `user`. Bounded: an overlong password is wrong
/// without being hashed.
pub fn password_matches(user: &User, password: &str) -> bool {
    if password.len() > MAX_PASSWORD_BYTES {
        return false;
    }
    match PasswordHash::new(&user.password) {
        Ok(hash) => Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .is_ok(),
        Err(_) => false,
    }
}

/// The account `name` when `password` is its password; `None` otherwise, after the same work
/// (an unknown name is checked against a decoy hash).
pub fn authenticate<'a>(users: &'a [User], name: &str, password: &str) -> Option<&'a User> {
    match users.iter().find(|u| u.name == name) {
        Some(user) => password_matches(user, password).then_some(user),
        None => {
            let decoy = User {
                name: String::new(),
                role: Role::Viewer,
                password: decoy_hash().to_string(),
            };
            let _ = password_matches(&decoy, password);
            None
        }
    }
}

/// Add account `name` with `role` and `password`, or set the role and password of the
/// existing one (its open sessions end). The password is hashed with Argon2id; the file is
/// written durably, readable by the appliance's user only.
pub fn set_password(
    data_dir: &Path,
    name: &str,
    role: Role,
    password: &str,
) -> Result<Change, UsersError> {
    if !valid_name(name) {
        return Err(UsersError::Name(name.to_string()));
    }
    if password.chars().count() < MIN_PASSWORD_CHARS || password.len() > MAX_PASSWORD_BYTES {
        return Err(UsersError::Password);
    }
    let hash = hash_password(password)?;
    change(data_dir, |users| {
        let change = match users.iter_mut().find(|u| u.name == name) {
            Some(user) => {
                user.role = role;
                user.password = hash;
                Change::Updated
            }
            None => {
                users.push(User {
                    name: name.to_string(),
                    role,
                    password: hash,
                });
                Change::Created
            }
        };
        Ok(change)
    })
}

/// Remove account `name`; `false` when there was none. Its sessions end at their next request.
pub fn remove_user(data_dir: &Path, name: &str) -> Result<bool, UsersError> {
    change(data_dir, |users| {
        let before = users.len();
        users.retain(|u| u.name != name);
        Ok(users.len() != before)
    })
}

/// Every account's name and role, in file order.
pub fn list(data_dir: &Path) -> Result<Vec<(String, Role)>, UsersError> {
    Ok(load(data_dir)?
        .into_iter()
        .map(|u| (u.name, u.role))
        .collect())
}

/// Read, change and write the users file under its lock.
fn change<T>(
    data_dir: &Path,
    edit: impl FnOnce(&mut Vec<User>) -> Result<T, UsersError>,
) -> Result<T, UsersError> {
    let file = path(data_dir);
    let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
    let write_error = |path: &Path, reason: String| UsersError::Write {
        path: path.to_path_buf(),
        reason,
    };
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| write_error(&dir, e.to_string()))?;
    }
    let lock_path = dir.join("users.lock");
    let _lock = match radiant_core::file_lock::FileLock::try_take(&lock_path) {
        Ok(Some(lock)) => lock,
        Ok(None) => return Err(UsersError::Locked { path: lock_path }),
        Err(e) => return Err(write_error(&lock_path, format!("{e:#}"))),
    };
    let mut users = load(data_dir)?;
    let out = edit(&mut users)?;
    if users.len() > MAX_USERS {
        return Err(UsersError::Full { path: file });
    }
    let text =
        toml::to_string(&UsersFile { users }).map_err(|e| write_error(&file, e.to_string()))?;
    let text = format!(
        "# The web console's accounts; written by the appliance CLI. Passwords are Argon2id\n\
         # PHC strings. Edit only with the CLI.\n{text}"
    );
    radiant_core::durable::write_durable(&file, text.as_bytes())
        .map_err(|e| write_error(&file, e.to_string()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| write_error(&file, e.to_string()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_set_is_stored_as_argon2id_and_only_that_password_matches() {
        let dir = tempfile::tempdir().unwrap();
        let change = set_password(dir.path(), "ana", Role::Admin, "correct horse battery").unwrap();
        assert_eq!(change, Change::Created);
        let text = std::fs::read_to_string(path(dir.path())).unwrap();
        assert!(!text.contains("correct horse"), "{text}");
        assert!(text.contains("$argon2id$v=19$m=19456,t=2,p=1$"), "{text}");
        let users = load(dir.path()).unwrap();
        assert_eq!(users.len(), 1);
        assert!(authenticate(&users, "ana", "correct horse battery").is_some());
        assert!(authenticate(&users, "ana", "correct horse batterY").is_none());
        assert!(authenticate(&users, "bob", "correct horse battery").is_none());
        let mode = std::fs::metadata(path(dir.path())).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.permissions().mode() & 0o777, 0o600);

        let change = set_password(dir.path(), "ana", Role::Viewer, "another long secret").unwrap();
        assert_eq!(change, Change::Updated);
        let users = load(dir.path()).unwrap();
        assert_eq!(users[0].role, Role::Viewer);
        assert!(authenticate(&users, "ana", "correct horse battery").is_none());
        assert!(remove_user(dir.path(), "ana").unwrap());
        assert!(load(dir.path()).unwrap().is_empty());
    }

    #[test]
    fn short_passwords_and_bad_names_are_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            set_password(dir.path(), "ana", Role::Admin, "short"),
            Err(UsersError::Password)
        ));
        assert!(matches!(
            set_password(dir.path(), "a b", Role::Admin, "long enough password"),
            Err(UsersError::Name(_))
        ));
        assert!(!path(dir.path()).exists());
    }

    #[test]
    fn a_users_file_with_a_hash_that_is_not_argon2id_is_an_error_naming_the_entry() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("console")).unwrap();
        std::fs::write(
            path(dir.path()),
            "[[user]]\nname = \"ana\"\nrole = \"admin\"\npassword = \"plain\"\n",
        )
        .unwrap();
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("user[0]: password is not a PHC string"),
            "{err}"
        );
        std::fs::write(
            path(dir.path()),
            "[[user]]\nname = \"ana\"\nrole = \"root\"\npassword = \"x\"\n",
        )
        .unwrap();
        assert!(load(dir.path()).is_err());
    }
}
