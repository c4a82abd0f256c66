-- crm_ingest_batch(): a batch of webhooks' events applied in one call, one transaction (issue 13, group commit).
--
-- The batcher (app/domain/ingest/batcher.py) gathers the webhooks that arrive while the previous batch is
-- in flight and sends their events here as parallel arrays, one element per event, each event tagged with
-- the index of its webhook (request). Events of one request are contiguous and in the request's order.
--
-- Per request, one subtransaction (BEGIN … EXCEPTION): a request whose events Postgres refuses (its
-- instance deleted meanwhile: 23503; a value out of a column's range) rolls back alone and is reported as
-- one 'failed' row with its SQLSTATE; the rest of the batch commits. Deadlocks and serialisation failures
-- are not caught: the whole batch rolls back and the batcher applies it again.
--
-- Per message: crm_ingest_message() (ingest_message.sql: contact, conversation lock, message with
-- seq = last_seq + 1, ON CONFLICT (instance, gateway id) DO NOTHING, summary), then its media row. A
-- duplicate inside the batch meets the earlier row of the same transaction and is a duplicate like any
-- redelivery. Per status: forward-only UPDATE; the caller passes the statuses that may precede the new one.
--
-- Lock order: the caller sorts requests by (org, chat id, instance) of their first message, so contacts
-- (org, wa_id) and conversations (instance, contact) are locked in the same order by every batch of every
-- process; a request of several chats may still cross another batch, which then deadlocks, rolls back
-- and is applied again.
--
-- Results are held back until a request's subtransaction succeeded (a returned row cannot be taken back).

DROP FUNCTION IF EXISTS crm_ingest_batch;

DROP TYPE IF EXISTS crm_ingest_outcome;

CREATE TYPE crm_ingest_outcome AS (
    request_index integer,
    event_index integer,          -- 1-based, in the arrays passed; NULL on a 'failed' row
    outcome text,                 -- created | duplicate | status | stale | failed
    message_id uuid,
    conversation_id uuid,
    seq bigint,
    contact_id uuid,
    contact_name text,
    status text,
    last_message_at timestamptz,
    last_message_preview text,
    last_message_direction text,
    unread_count integer,
    sqlstate text,                -- 'failed' only
    error text
);

CREATE FUNCTION crm_ingest_batch(
    p_now timestamptz,
    p_request integer[],
    p_is_status boolean[],
    p_org_id uuid[],
    p_instance_id uuid[],
    p_wa_id text[],
    p_contact_name text[],
    p_gateway_message_id text[],
    p_direction text[],
    p_type text[],
    p_body text[],
    p_status text[],              -- a message's status; a status event's new status
    p_allowed_from text[],        -- status events: the statuses it may follow, comma-separated
    p_sent_at timestamptz[],
    p_raw text[],                 -- JSON text
    p_preview text[],
    p_message_id uuid[],
    p_new_contact_id uuid[],
    p_new_conversation_id uuid[],
    p_media_id uuid[],            -- NULL: no media
    p_media_ref text[],
    p_media_mime text[],
    p_media_size bigint[],
    p_media_sha256 text[],
    p_media_filename text[],
    p_media_url text[],
    p_media_inline text[]
) RETURNS SETOF crm_ingest_outcome
LANGUAGE plpgsql AS $$
DECLARE
    v_n integer := coalesce(array_length(p_request, 1), 0);
    v_first integer := 1;
    v_last integer;
    i integer;
    v_held crm_ingest_outcome[];
    v_out crm_ingest_outcome;
    v_msg record;
    v_upd record;
    v_state text;
    v_error text;
BEGIN
    WHILE v_first <= v_n LOOP
        v_last := v_first;
        WHILE v_last < v_n AND p_request[v_last + 1] = p_request[v_first] LOOP
            v_last := v_last + 1;
        END LOOP;
        v_held := '{}';
        BEGIN
            FOR i IN v_first .. v_last LOOP
                IF p_is_status[i] THEN
                    UPDATE messages m SET status = p_status[i], updated_at = p_now
                     WHERE m.instance_id = p_instance_id[i] AND m.gateway_message_id = p_gateway_message_id[i]
                       AND m.status = ANY (string_to_array(p_allowed_from[i], ','))
                    RETURNING m.id, m.conversation_id, m.seq INTO v_upd;
                    IF FOUND THEN
                        v_held := v_held || ROW(p_request[i], i, 'status', v_upd.id, v_upd.conversation_id,
                            v_upd.seq, NULL, NULL, p_status[i], NULL, NULL, NULL, NULL, NULL, NULL)::crm_ingest_outcome;
                    ELSE
                        v_held := v_held || ROW(p_request[i], i, 'stale', NULL, NULL, NULL, NULL, NULL, NULL,
                            NULL, NULL, NULL, NULL, NULL, NULL)::crm_ingest_outcome;
                    END IF;
                    CONTINUE;
                END IF;
                SELECT * INTO v_msg FROM crm_ingest_message(
                    p_org_id[i], p_instance_id[i], p_wa_id[i], p_contact_name[i], p_gateway_message_id[i],
                    p_direction[i], p_type[i], p_body[i], p_status[i], p_sent_at[i], p_raw[i]::jsonb,
                    p_preview[i], p_now, p_message_id[i], p_new_contact_id[i], p_new_conversation_id[i]);
                IF NOT FOUND THEN  -- a redelivery, or the echo of our own send (it has its row already)
                    v_held := v_held || ROW(p_request[i], i, 'duplicate', NULL, NULL, NULL, NULL, NULL, NULL,
                        NULL, NULL, NULL, NULL, NULL, NULL)::crm_ingest_outcome;
                    CONTINUE;
                END IF;
                IF p_media_id[i] IS NOT NULL THEN
                    INSERT INTO media (id, org_id, message_id, gateway_ref, mime_type, size_bytes, sha256, filename,
                                       source_url, inline_base64, state, created_at, updated_at)
                    VALUES (p_media_id[i], p_org_id[i], v_msg.message_id, p_media_ref[i], p_media_mime[i],
                            p_media_size[i], p_media_sha256[i], p_media_filename[i], p_media_url[i],
                            p_media_inline[i], 'pending', p_now, p_now);
                END IF;
                v_held := v_held || ROW(p_request[i], i, 'created', v_msg.message_id, v_msg.conversation_id,
                    v_msg.seq, v_msg.contact_id, v_msg.contact_name, v_msg.status, v_msg.last_message_at,
                    v_msg.last_message_preview, v_msg.last_message_direction, v_msg.unread_count,
                    NULL, NULL)::crm_ingest_outcome;
            END LOOP;
        EXCEPTION
            WHEN deadlock_detected OR serialization_failure THEN
                RAISE;  -- the whole batch is applied again, in the same lock order
            WHEN OTHERS THEN
                GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_error = MESSAGE_TEXT;
                v_held := ARRAY[ROW(p_request[v_first], NULL, 'failed', NULL, NULL, NULL, NULL, NULL, NULL,
                    NULL, NULL, NULL, NULL, v_state, v_error)::crm_ingest_outcome];
        END;
        FOREACH v_out IN ARRAY v_held LOOP
            RETURN NEXT v_out;
        END LOOP;
        v_first := v_last + 1;
    END LOOP;
END
$$;
