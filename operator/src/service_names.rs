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
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((user, hosts)) => (Some(user), hosts),
        None => (None, authority),
    };
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
    fn database_urls_get_their_host_qualified_and_keep_everything_else() {
        assert_eq!(
            qualify_database_url(
                "postgres://outbox:s3cr@t@outbox-postgres:5432/outbox?options=-csearch_path%3Dx",
                "ns"
            ),
            "postgres://outbox:s3cr@t@outbox-postgres.ns.svc:5432/outbox?options=-csearch_path%3Dx"
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
