//! Connection URLs as they may appear in errors and logs: without their password.

/// `url` with the password replaced by `***`, whether it is in the user info
/// (`postgres://app:secret@host/db`) or a `password=` query parameter.
///
/// ```
/// use lifecycle_core::redact_url;
/// assert_eq!(redact_url("postgres://app:s3cret@db:5432/orders"), "postgres://app:***@db:5432/orders");
/// assert_eq!(redact_url("postgres://db/orders?user=app&password=s3cret"), "postgres://db/orders?user=app&password=***");
/// assert_eq!(redact_url("sqlite://orders.db"), "sqlite://orders.db");
/// // Generated passwords with `/`, `?`, `#` or `@` unencoded are hidden too.
/// assert_eq!(redact_url("postgres://app:p/a?s#s@w@db/orders"), "postgres://app:***@db/orders");
/// ```
pub fn redact_url(url: &str) -> String {
    let mut redacted = url.to_owned();
    if let Some(password) = password_in(url) {
        redacted = redacted.replace(password, "***");
    }
    redacted
}

/// The password written in `url`, if any.
///
/// The user info ends at the last `@`, not at the first `/`, `?` or `#`: generated passwords
/// often hold those unencoded (`app:pa/ss#w?rd@db`), and a parser that stops at them finds no
/// password and leaves it in clear. An `@` in the path or query with user info before it hides
/// more than the password: the safe side.
fn password_in(url: &str) -> Option<&str> {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[after_scheme..];
    if let Some(at) = rest.rfind('@') {
        if let Some((_, password)) = rest[..at].split_once(':') {
            if !password.is_empty() {
                return Some(password);
            }
        }
    }
    let query = url.split_once('?')?.1;
    query.split('&').find_map(|pair| pair.strip_prefix("password=")).filter(|p| !p.is_empty())
}

/// `text` with every occurrence of the password in `url` replaced by `***`: for driver errors,
/// which may quote what they were given.
///
/// ```
/// use lifecycle_core::scrub_password;
/// let url = "redis://:hunter2@cache:6379";
/// assert_eq!(scrub_password("bad password hunter2", url), "bad password ***");
/// ```
pub fn scrub_password(text: &str, url: &str) -> String {
    match password_in(url) {
        Some(password) => text.replace(password, "***"),
        None => text.to_owned(),
    }
}
