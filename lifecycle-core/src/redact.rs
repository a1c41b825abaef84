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
/// // Every password written in it, wherever its text appears: a user named like the password
/// // would tell it.
/// assert_eq!(redact_url("postgres://app:one@db/app?password=two"), "postgres://app:***@db/app?password=***");
/// assert_eq!(redact_url("amqp://guest:guest@rabbit/"), "amqp://***:***@rabbit/");
/// ```
pub fn redact_url(url: &str) -> String {
    scrub_password(url, url)
}

/// Where passwords are written in `url`, in order, without overlaps: the user info's, then
/// every `password=` query parameter's.
///
/// The user info ends at the last `@`, not at the first `/`, `?` or `#`: generated passwords
/// often hold those unencoded (`app:pa/ss#w?rd@db`), and a parser that stops at them finds no
/// password and leaves it in clear. An `@` in the path or query with user info before it hides
/// more than the password: the safe side.
fn password_ranges(url: &str) -> Vec<std::ops::Range<usize>> {
    let mut ranges: Vec<std::ops::Range<usize>> = Vec::new();
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[after_scheme..];
    if let Some(at) = rest.rfind('@')
        && let Some(colon) = rest[..at].find(':')
        && colon + 1 < at
    {
        ranges.push(after_scheme + colon + 1..after_scheme + at);
    }
    if let Some(question) = url.find('?') {
        let mut offset = question + 1;
        for pair in url[question + 1..].split('&') {
            let start = offset + "password=".len();
            offset += pair.len() + 1;
            let Some(value) = pair.strip_prefix("password=").filter(|value| !value.is_empty()) else {
                continue;
            };
            if ranges.last().is_none_or(|last| last.end <= start - "password=".len()) {
                ranges.push(start..start + value.len());
            }
        }
    }
    ranges
}

/// `text` with every occurrence of each password in `url` replaced by `***`: for driver errors,
/// which may quote what they were given.
///
/// ```
/// use lifecycle_core::scrub_password;
/// let url = "redis://:hunter2@cache:6379";
/// assert_eq!(scrub_password("bad password hunter2", url), "bad password ***");
/// ```
pub fn scrub_password(text: &str, url: &str) -> String {
    let mut passwords: Vec<&str> = password_ranges(url).into_iter().map(|range| &url[range]).collect();
    // The longest first: a shorter password inside a longer one would leave the rest of it.
    passwords.sort_by_key(|password| std::cmp::Reverse(password.len()));
    passwords.dedup();
    passwords.into_iter().fold(text.to_owned(), |text, password| text.replace(password, "***"))
}
