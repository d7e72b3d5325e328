//! Host names in an OutboxSystem's settings mean what they mean to its pods, which run in
//! the system's namespace: a bare Service name such as `outbox-kafka` is the Service of
//! that name in that namespace. The operator runs in a namespace of its own (the chart's
//! `outbox-system`), where the same bare name resolves to nothing, so it qualifies such
//! names (`outbox-kafka.<namespace>.svc`) before it connects to Kafka or PostgreSQL.

/// `host` as the pods of `namespace` resolve it: a single DNS label other than
/// `localhost` becomes `<host>.<namespace>.svc`; names with a dot, IP addresses and
/// anything else stay as they are.
pub fn qualify_host(host: &str, namespace: &str) -> String {
    let bare_label = !host.is_empty()
        && host.len() <= 63
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !host.starts_with('-')
        && !host.bytes().all(|b| b.is_ascii_digit());
    if bare_label && !host.eq_ignore_ascii_case("localhost") {
        format!("{host}.{namespace}.svc")
    } else {
        host.to_string()
    }
}

/// One `host[:port]` (or `[v6]:port`) with its host qualified.
fn qualify_host_port(entry: &str, namespace: &str) -> String {
    if entry.starts_with('[') {
        return entry.to_string();
    }
    match entry.rsplit_once(':') {
        Some((host, port)) => format!("{}:{port}", qualify_host(host, namespace)),
        None => qualify_host(entry, namespace),
    }
}

/// Every entry of a comma-separated Kafka bootstrap list (`host:port`, optionally with a
/// `PROTOCOL://` prefix), qualified.
pub fn qualify_bootstrap_servers(servers: &str, namespace: &str) -> String {
    servers
        .split(',')
        .map(|entry| {
            let entry = entry.trim();
            match entry.split_once("://") {
                Some((protocol, rest)) => {
                    format!("{protocol}://{}", qualify_host_port(rest, namespace))
                }
                None => qualify_host_port(entry, namespace),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// A `postgres://` or `postgresql://` URL with its host(s) qualified; a key=value
/// connection string, or a URL whose host is percent-encoded (a socket path), is
/// returned unchanged.
pub fn qualify_database_url(url: &str, namespace: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    if !scheme.eq_ignore_ascii_case("postgres") && !scheme.eq_ignore_ascii_case("postgresql") {
        return url.to_string();
    }
    // Split as tokio-postgres, which opens the session, reads it: the credentials run
    // to the first `@` (a password may hold `/`, `?` or `#` unencoded, and an `@` only
    // as `%40`), the host(s) from there to the next `/` or `?`.
    let (userinfo, after) = match rest.split_once('@') {
        Some((user, after)) => (Some(user), after),
        None => (None, rest),
    };
    let end = after.find(['/', '?']).unwrap_or(after.len());
    let (hosts, tail) = after.split_at(end);
    if hosts.contains('%') {
        return url.to_string();
    }
    let hosts = hosts
        .split(',')
        .map(|h| qualify_host_port(h, namespace))
        .collect::<Vec<_>>()
        .join(",");
    match userinfo {
        Some(user) => format!("{scheme}://{user}@{hosts}{tail}"),
        None => format!("{scheme}://{hosts}{tail}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_service_names_are_qualified_with_the_systems_namespace() {
        assert_eq!(
            qualify_bootstrap_servers("outbox-kafka:9092", "team-a"),
            "outbox-kafka.team-a.svc:9092"
        );
        assert_eq!(
            qualify_bootstrap_servers("k1:9092, SASL_SSL://k2:9093", "ns"),
            "k1.ns.svc:9092,SASL_SSL://k2.ns.svc:9093"
        );
    }

    #[test]
    fn qualified_names_addresses_and_localhost_stay_as_written() {
        for servers in [
            "kafka.other.svc:9092",
            "kafka.example.com:9092",
            "127.0.0.1:9092",
            "[::1]:9092",
            "localhost:9092",
        ] {
            assert_eq!(qualify_bootstrap_servers(servers, "ns"), servers);
        }
    }

    #[test]
    fn a_password_holding_reserved_characters_is_kept_and_only_the_host_qualified() {
        for password in testbed_support::passwords_with_every_reserved_character() {
            let url =
                format!("postgres://outbox:{password}@outbox-postgres:5432/outbox?sslmode=disable");
            let qualified = qualify_database_url(&url, "team-a");
            let parse = |u: &str| {
                u.parse::<tokio_postgres::Config>()
                    .unwrap_or_else(|e| panic!("{u}: {e}"))
            };
            let (before, after) = (parse(&url), parse(&qualified));
            assert_eq!(after.get_password(), before.get_password(), "{qualified}");
            assert_eq!(after.get_user(), Some("outbox"), "{qualified}");
            assert_eq!(after.get_dbname(), Some("outbox"), "{qualified}");
            assert_eq!(after.get_ports(), [5432], "{qualified}");
            assert_eq!(
                after.get_hosts(),
                [tokio_postgres::config::Host::Tcp(
                    "outbox-postgres.team-a.svc".into()
                )],
                "{qualified}"
            );
        }
    }

    #[test]
    fn database_urls_get_their_host_qualified_and_keep_everything_else() {
        assert_eq!(
            qualify_database_url(
                "postgres://outbox:s3cr%40t@outbox-postgres:5432/outbox?options=-csearch_path%3Dx",
                "ns"
            ),
            "postgres://outbox:s3cr%40t@outbox-postgres.ns.svc:5432/outbox?options=-csearch_path%3Dx"
        );
        assert_eq!(
            qualify_database_url("postgresql://pg/db", "ns"),
            "postgresql://pg.ns.svc/db"
        );
        for url in [
            "postgres://u:p@127.0.0.1:5432/db",
            "postgres://u@db.example.com/db",
            "host=pg user=u dbname=db",
            "postgres://%2Fvar%2Frun%2Fpostgresql/db",
        ] {
            assert_eq!(qualify_database_url(url, "ns"), url);
        }
    }
}
