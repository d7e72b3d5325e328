//! Passwords out of database URLs before they reach a log or an error message.

/// The URL with its password replaced, for logs and error messages.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return redact_key_value(url);
    };
    // A password may hold `/`, `?`, `#` or `@` unencoded (tokio-postgres reads the
    // credentials up to the first `@`, others up to the last), so everything up to the
    // last `@` is taken for credentials: after the user name it is redacted whole.
    // Where that `@` stood in a query instead, more is hidden than needed, never less.
    let Some((userinfo, after)) = rest.rsplit_once('@') else {
        return format!("{scheme}://{}", redact_query_password(rest));
    };
    let after = redact_query_password(after);
    match userinfo.find([':', '/', '?', '#']) {
        Some(end) => format!("{scheme}://{}:***@{after}", &userinfo[..end]),
        None => format!("{scheme}://{userinfo}@{after}"),
    }
}

/// `password=...` in a URL's query string, redacted.
fn redact_query_password(tail: &str) -> String {
    let Some((path, query)) = tail.split_once('?') else {
        return tail.to_string();
    };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
            _ => pair.to_string(),
        })
        .collect();
    format!("{path}?{}", query.join("&"))
}

/// A key=value connection string (`host=db password='s3 cr@t' dbname=x`) with the
/// password's value (quoted or not) replaced.
fn redact_key_value(dsn: &str) -> String {
    let mut out = String::with_capacity(dsn.len());
    let mut rest = dsn;
    while let Some(at) = find_password_key(rest) {
        let (before, after) = rest.split_at(at);
        out.push_str(before);
        out.push_str("password=***");
        let value = after["password".len()..].trim_start();
        let value = value.strip_prefix('=').unwrap_or(value).trim_start();
        rest = if let Some(quoted) = value.strip_prefix('\'') {
            // Up to the closing quote; `\'` escapes a quote inside.
            let mut end = quoted.len();
            let mut escaped = false;
            for (i, c) in quoted.char_indices() {
                match c {
                    '\\' if !escaped => escaped = true,
                    '\'' if !escaped => {
                        end = i + 1;
                        break;
                    }
                    _ => escaped = false,
                }
            }
            &quoted[end.min(quoted.len())..]
        } else {
            &value[value.find(char::is_whitespace).unwrap_or(value.len())..]
        };
    }
    out.push_str(rest);
    out
}

/// Where a `password` key (followed by `=`) starts, at the start or after whitespace.
fn find_password_key(text: &str) -> Option<usize> {
    let lower = text.to_ascii_lowercase();
    let mut from = 0;
    while let Some(i) = lower[from..].find("password") {
        let at = from + i;
        let starts_word = at == 0 || lower[..at].ends_with(char::is_whitespace);
        let followed = lower[at + "password".len()..].trim_start().starts_with('=');
        if starts_word && followed {
            return Some(at);
        }
        from = at + "password".len();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_password_with_an_at_sign_is_redacted_whole() {
        let url = "postgres://outbox:s3cr@t@db.example:5432/outbox?sslmode=require";
        let redacted = redact_url(url);
        assert_eq!(
            redacted,
            "postgres://outbox:***@db.example:5432/outbox?sslmode=require"
        );
    }

    #[test]
    fn a_password_in_the_query_string_is_redacted() {
        let redacted = redact_url("postgres://db/outbox?user=outbox&password=s3cr%40t&x=1");
        assert_eq!(
            redacted,
            "postgres://db/outbox?user=outbox&password=***&x=1"
        );
    }

    #[test]
    fn key_value_passwords_are_redacted_quoted_or_not() {
        assert_eq!(
            redact_url("host=db user=outbox password=s3cr@t dbname=outbox"),
            "host=db user=outbox password=*** dbname=outbox"
        );
        assert_eq!(
            redact_url("host=db password = 'it\\'s s3cr@t' dbname=outbox"),
            "host=db password=*** dbname=outbox"
        );
        assert_eq!(redact_url("PASSWORD=s3cr@t"), "password=***");
        assert_eq!(
            redact_url("host=db oldpassword=x dbname=y"),
            "host=db oldpassword=x dbname=y"
        );
    }

    #[test]
    fn a_password_holding_reserved_characters_never_reaches_a_log() {
        for password in testbed_support::passwords_with_every_reserved_character() {
            let url =
                format!("postgres://outbox:{password}@db.example:5432/outbox?sslmode=disable");
            let redacted = redact_url(&url);
            assert!(!redacted.contains("Zq"), "{url} redacted as {redacted}");
            assert!(
                redacted.starts_with("postgres://outbox:***@db.example:5432/outbox"),
                "the user and host stay for whoever reads the log: {redacted}"
            );
        }
    }

    #[test]
    fn passwords_are_redacted_from_urls() {
        assert_eq!(
            redact_url("postgres://outbox:secret@127.0.0.1:5432/outbox"),
            "postgres://outbox:***@127.0.0.1:5432/outbox"
        );
        assert_eq!(redact_url("postgres://h/db"), "postgres://h/db");
    }
}
