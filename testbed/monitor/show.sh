#!/usr/bin/env bash
# One screen of what the testbed's Prometheus (testbed/monitor.sh) holds: the targets it
# scrapes, the systems' backlog and delivery, each group's lag and acknowledgements, the
# LoadTests' results and the alerts. Each line is the PromQL that made it.
. "$(dirname "$0")/../lib.sh"
base=$("$TESTBED_DIR/monitor.sh" url)

# show TITLE QUERY LABEL...: the query's result, one line per series: its LABELs, its value.
show() {
  local title=$1 query=$2
  shift 2
  printf '\n%s\n  %s\n' "$title" "$query"
  curl -fsS "$base/api/v1/query" --data-urlencode "query=$query" |
    jq -r --args 'if (.data.result | length) == 0 then "    (none)" else .data.result[] |
      "    " + ([.metric[$ARGS.positional[]] // "-"] | join("  ")) + "  " +
      (.value[1] | tonumber | . * 1000 | round / 1000 | tostring) end' "$@" |
    sort
}

show "targets up (scraped by the PodMonitor and ServiceMonitor)" 'count by (job) (up == 1)' job
show "backlog (rows not yet relayed)" 'max by (namespace, system) (outbox_backlog_pending)' namespace system
show "published to Kafka since the producers started" 'sum by (namespace, system) (outbox_relay_published_total)' namespace system
show "relay leader" 'max by (namespace, system, pod) (outbox_relay_leader) == 1' namespace system pod
show "lag by consumer group" 'sum by (namespace, system, group) (outbox_consumer_lag)' namespace system group
show "acknowledged since the consumers started, by group" 'sum by (namespace, system, group) (outbox_consumer_acknowledged_total)' namespace system group
show "ingest p95 (s) by route, last 10 minutes" 'histogram_quantile(0.95, sum by (route, le) (rate(outbox_request_duration_seconds_bucket[10m])))' route
show "LoadTests: verified (1 yes, 0 no)" 'outbox_loadtest_verified' namespace loadtest
show "LoadTests: messages accepted" 'outbox_loadtest_messages_accepted' namespace loadtest
show "alerts firing" 'ALERTS{alertstate="firing"}' alertname namespace system
