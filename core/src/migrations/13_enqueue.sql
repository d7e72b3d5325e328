-- Enqueue in the application's own transaction: functions an application calls on the
-- same database, inside its own transaction, so that its business write and its
-- message commit together or not at all (docs/enqueue-in-your-transaction.md).
--
-- Rows are stored exactly as the HTTP path stores them: ids from the same sequence,
-- handed out densely from a block per session; the caller's transaction id; headers
-- as a JSON object of strings. The same rules as ingest refuse, inside the caller's
-- transaction and naming the field, what the relay could never hand to Kafka.

-- The topics this system's producers relay, with the largest message each takes
-- (payload, key and headers as Kafka counts them), as the producers last read it from
-- the brokers. Written by every producer, every 30 s.
CREATE TABLE outbox_topics (
    topic              text        PRIMARY KEY,
    max_record_bytes   integer     NOT NULL,
    reason             text        NOT NULL,
    updated_at         timestamptz NOT NULL DEFAULT now()
);

-- Bytes of Kafka's zig-zag varint for a length `n`.
CREATE FUNCTION outbox_varint_len(n bigint) RETURNS integer
LANGUAGE plpgsql IMMUTABLE STRICT AS $fn$
DECLARE
    zigzag bigint := n * 2;
    bytes  integer := 1;
BEGIN
    WHILE zigzag >= 128 LOOP
        zigzag := zigzag >> 7;
        bytes := bytes + 1;
    END LOOP;
    RETURN bytes;
END
$fn$;

-- Refuses, naming `field`, a message the relay could not hand to Kafka: an unknown
-- topic, headers that are not an object of strings, a reserved header name, more than
-- 64 headers or 32 KiB of them, or a message larger than its topic takes. Returns the
-- headers to store (NULL for none).
CREATE FUNCTION outbox_checked_headers(field text, topic text, key text, payload text,
                                       headers jsonb) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $fn$
DECLARE
    limit_bytes  integer;
    limit_reason text;
    header       record;
    header_count integer := 0;
    header_bytes bigint := 0;
    size         bigint;
    served       text;
BEGIN
    IF topic IS NULL THEN
        RAISE EXCEPTION '%topic: a message needs a topic', field
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF payload IS NULL THEN
        RAISE EXCEPTION '%message: a message needs a payload', field
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT t.max_record_bytes, t.reason INTO limit_bytes, limit_reason
    FROM outbox_topics t WHERE t.topic = outbox_checked_headers.topic;
    IF NOT FOUND THEN
        SELECT string_agg(format('`%s`', t.topic), ', ' ORDER BY t.topic) INTO served
        FROM outbox_topics t;
        RAISE EXCEPTION '%topic: unknown topic `%`: this system relays %', field, topic,
            COALESCE(served, 'no topic yet (no producer of this system has started)')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF headers IS NOT NULL AND jsonb_typeof(headers) <> 'null' THEN
        IF jsonb_typeof(headers) <> 'object' THEN
            RAISE EXCEPTION '%headers: headers are a JSON object of strings, not a JSON %',
                field, jsonb_typeof(headers) USING ERRCODE = 'invalid_parameter_value';
        END IF;
        FOR header IN SELECT h.key AS name, h.value FROM jsonb_each(headers) AS h LOOP
            IF jsonb_typeof(header.value) <> 'string' THEN
                RAISE EXCEPTION '%headers.%: a header value is a string, not a JSON %',
                    field, header.name, jsonb_typeof(header.value)
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
            IF lower(left(header.name, 7)) = 'outbox-' THEN
                RAISE EXCEPTION '%headers.%: header names starting with `outbox-` are reserved for the outbox''s own headers',
                    field, header.name USING ERRCODE = 'invalid_parameter_value';
            END IF;
            header_count := header_count + 1;
            header_bytes := header_bytes
                + outbox_varint_len(octet_length(header.name)) + octet_length(header.name)
                + outbox_varint_len(octet_length(header.value #>> '{}'))
                + octet_length(header.value #>> '{}');
        END LOOP;
        IF header_count > 64 THEN
            RAISE EXCEPTION '%headers: % headers; at most 64 per message are allowed',
                field, header_count USING ERRCODE = 'program_limit_exceeded';
        END IF;
        IF header_bytes > 32768 THEN
            RAISE EXCEPTION '%headers: the headers take % bytes (names, values and Kafka''s framing); at most 32768 per message are allowed',
                field, header_bytes USING ERRCODE = 'program_limit_exceeded';
        END IF;
    END IF;
    size := octet_length(payload) + COALESCE(octet_length(key), 0) + header_bytes;
    IF size > limit_bytes THEN
        RAISE EXCEPTION '%message: the message is % bytes (payload, key and headers) and topic `%` takes at most % bytes (%)',
            field, size, topic, limit_bytes, limit_reason
            USING ERRCODE = 'program_limit_exceeded';
    END IF;
    RETURN CASE WHEN header_count = 0 THEN NULL ELSE headers END;
END
$fn$;

-- The next message id of this session: dense within a block of 128 reserved from the
-- sequence, as a producer hands out ids to single messages. The block is kept in a
-- setting of the session named for the database and schema; a transaction that rolls
-- back gives its ids back with it.
CREATE FUNCTION outbox_next_id() RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    setting text := 'outbox.ids_' || left(md5(current_database() || '.' || current_schema()), 16);
    held    text := current_setting(setting, true);
    next_id bigint;
    end_id  bigint;
BEGIN
    IF held IS NOT NULL AND held <> '' THEN
        next_id := split_part(held, ':', 1)::bigint;
        end_id := split_part(held, ':', 2)::bigint;
    END IF;
    IF next_id IS NULL OR next_id >= end_id THEN
        next_id := nextval('outbox_message_id_seq');
        end_id := next_id + 128;
    END IF;
    PERFORM set_config(setting, (next_id + 1) || ':' || end_id, false);
    RETURN next_id;
END
$fn$;

-- The contract, SECURITY DEFINER with this schema pinned: a caller needs the right to
-- execute them, none on the tables.
CREATE FUNCTION outbox_enqueue(topic text, key text, payload text, headers jsonb DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER AS $body$
DECLARE
    stored  jsonb := outbox_checked_headers('', topic, key, payload, headers);
    id      bigint := outbox_next_id();
BEGIN
    INSERT INTO outbox_messages (id, topic, key, payload, headers)
    VALUES (id, topic, key, payload, stored);
    -- Delivered when the caller's transaction commits, never if it rolls back.
    PERFORM pg_notify('outbox_relay', '');
    RETURN id;
END
$body$;

CREATE FUNCTION outbox_enqueue_many(messages jsonb)
RETURNS bigint[]
LANGUAGE plpgsql VOLATILE SECURITY DEFINER AS $body$
DECLARE
    malformed integer;
    ids       bigint[];
BEGIN
    IF messages IS NULL OR jsonb_typeof(messages) <> 'array' OR jsonb_array_length(messages) = 0 THEN
        RAISE EXCEPTION 'messages: a JSON array of at least one message, each {"topic", "key", "message", "headers"}'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF jsonb_array_length(messages) > 50000 THEN
        RAISE EXCEPTION 'messages: % messages; at most 50000 per call are allowed', jsonb_array_length(messages)
            USING ERRCODE = 'program_limit_exceeded';
    END IF;
    SELECT m.position - 1 INTO malformed
    FROM jsonb_array_elements(messages) WITH ORDINALITY AS m(message, position)
    WHERE jsonb_typeof(m.message) <> 'object'
       OR jsonb_typeof(m.message -> 'topic') IS DISTINCT FROM 'string'
       OR jsonb_typeof(m.message -> 'message') IS DISTINCT FROM 'string'
       OR COALESCE(jsonb_typeof(m.message -> 'key'), 'null') NOT IN ('string', 'null')
    ORDER BY m.position LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'messages[%]: a message is {"topic": string, "message": string, "key": string or null, "headers": object of strings}', malformed
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- Set-based: each message checked and given the next id in its order, all stored
    -- by one statement.
    WITH checked AS MATERIALIZED (
        SELECT s.position,
               outbox_checked_headers(format('messages[%s].', s.position - 1),
                   s.message ->> 'topic', s.message ->> 'key', s.message ->> 'message',
                   s.message -> 'headers') AS headers,
               s.message ->> 'topic' AS topic, s.message ->> 'key' AS key,
               s.message ->> 'message' AS payload,
               outbox_next_id() AS id
        FROM (SELECT m.message, m.position
              FROM jsonb_array_elements(messages) WITH ORDINALITY AS m(message, position)
              ORDER BY m.position) AS s),
    stored AS (
        INSERT INTO outbox_messages (id, topic, key, payload, headers)
        SELECT c.id, c.topic, c.key, c.payload, c.headers FROM checked c)
    SELECT array_agg(c.id ORDER BY c.position) INTO ids FROM checked c;
    PERFORM pg_notify('outbox_relay', '');
    RETURN ids;
END
$body$;

-- This schema pinned for both: a caller's search_path cannot point them elsewhere.
DO $do$
BEGIN
    EXECUTE format('ALTER FUNCTION outbox_enqueue(text, text, text, jsonb) SET search_path = %I, pg_temp', current_schema());
    EXECUTE format('ALTER FUNCTION outbox_enqueue_many(jsonb) SET search_path = %I, pg_temp', current_schema());
END
$do$;

REVOKE ALL ON FUNCTION outbox_enqueue(text, text, text, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION outbox_enqueue_many(jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION outbox_checked_headers(text, text, text, text, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION outbox_next_id() FROM PUBLIC;

-- The role an application is granted (`GRANT <role> TO app`): the right to call the two
-- functions and to find them in this schema, nothing on the tables. Its name is the
-- database's and schema's, as outbox_enqueue_role() says; creating it needs CREATEROLE,
-- and without it the functions are granted by hand (the document says how).
CREATE FUNCTION outbox_enqueue_role() RETURNS name
LANGUAGE sql STABLE AS $fn$
    SELECT (CASE WHEN octet_length(current_database() || '_' || current_schema() || '_enqueue') <= 63
                 THEN current_database() || '_' || current_schema() || '_enqueue'
                 ELSE 'outbox_enqueue_' || left(md5(current_database() || '.' || current_schema()), 16)
            END)::name
$fn$;

DO $do$
DECLARE
    role name := outbox_enqueue_role();
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = role) THEN
        EXECUTE format('CREATE ROLE %I NOLOGIN', role);
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', current_schema(), role);
    EXECUTE format('GRANT EXECUTE ON FUNCTION outbox_enqueue(text, text, text, jsonb), outbox_enqueue_many(jsonb) TO %I', role);
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'could not create or grant role %: grant EXECUTE on outbox_enqueue and outbox_enqueue_many and USAGE on schema % to the application yourself (docs/enqueue-in-your-transaction.md)', role, current_schema();
END
$do$;
