-- crm_ingest_message(): a new message's whole write path in one database round trip (migration 0003 applies
-- this file; crm_ingest_batch() in ingest_batch.sql calls it per message, IngestService per message too).
--
-- Ingest is the hot path. As six statements from Python it cost ~1 ms of client CPU per message and topped
-- out near 1,000 messages/s on two cores; as one function call it runs ~3x faster. The steps:
--
--   contact      read; upsert only when new or renamed
--   conversation SELECT ... FOR UPDATE (create if missing): the row lock serialises writers of one chat
--   message      INSERT with seq = last_seq + 1, ON CONFLICT (instance, gateway id) DO NOTHING; a
--                redelivery returns no row and consumes no seq, because the summary is bumped only after
--   summary      last_seq, newest preview/time, unread (+1 inbound, 0 when the business replied), reopen
--                if closed (app/domain/conversations/outbound.py mirrors the seq and summary rules for an
--                agent's own send)
--   echo         a gateway's webhook for a message an agent sent from the CRM can arrive before the send
--                job has stored the gateway's id; it then adopts that pending row instead of adding another
--
-- The caller owns the transaction (this function never commits) and passes pre-generated ids (UUIDv7).
CREATE OR REPLACE FUNCTION crm_ingest_message(
    p_org_id uuid,
    p_instance_id uuid,
    p_wa_id text,
    p_contact_name text,          -- NULL: keep whatever name the contact has
    p_gateway_message_id text,
    p_direction text,
    p_type text,
    p_body text,
    p_status text,
    p_sent_at timestamptz,
    p_raw jsonb,
    p_preview text,
    p_now timestamptz,
    p_message_id uuid,            -- ids for the rows this call may create
    p_new_contact_id uuid,
    p_new_conversation_id uuid
) RETURNS TABLE (
    message_id uuid, conversation_id uuid, seq bigint,
    -- the conversation's summary after this message, for the inbox event published after commit
    contact_id uuid, contact_name text, status text, last_message_at timestamptz,
    last_message_preview text, last_message_direction text, unread_count integer
)
LANGUAGE plpgsql AS $$
DECLARE
    v_contact_id uuid;
    v_contact_name text;
    v_conversation_id uuid;
    v_last_seq bigint;
    v_inbound boolean := p_direction = 'inbound';
    v_status text;
    v_last_message_at timestamptz;
    v_preview text;
    v_last_direction text;
    v_unread integer;
BEGIN
    SELECT c.id, c.name INTO v_contact_id, v_contact_name
      FROM contacts c WHERE c.org_id = p_org_id AND c.wa_id = p_wa_id;
    IF v_contact_id IS NULL OR (p_contact_name IS NOT NULL AND v_contact_name IS DISTINCT FROM p_contact_name) THEN
        INSERT INTO contacts AS c (id, org_id, wa_id, name, created_at, updated_at)
        VALUES (p_new_contact_id, p_org_id, p_wa_id, p_contact_name, p_now, p_now)
        ON CONFLICT ON CONSTRAINT uq_contacts_org_wa_id
            DO UPDATE SET name = coalesce(EXCLUDED.name, c.name), updated_at = p_now
        RETURNING c.id, c.name INTO v_contact_id, v_contact_name;
    END IF;

    SELECT cv.id, cv.last_seq INTO v_conversation_id, v_last_seq
      FROM conversations cv WHERE cv.instance_id = p_instance_id AND cv.contact_id = v_contact_id
       FOR UPDATE;
    IF v_conversation_id IS NULL THEN
        INSERT INTO conversations (id, org_id, instance_id, contact_id, status, last_seq, last_message_at,
                                   unread_count, created_at, updated_at)
        VALUES (p_new_conversation_id, p_org_id, p_instance_id, v_contact_id, 'open', 0, p_sent_at, 0, p_now, p_now)
        ON CONFLICT ON CONSTRAINT uq_conversations_instance_contact DO NOTHING
        RETURNING id INTO v_conversation_id;
        v_last_seq := 0;
        IF v_conversation_id IS NULL THEN  -- lost the race to create it: lock the winner's row
            SELECT cv.id, cv.last_seq INTO v_conversation_id, v_last_seq
              FROM conversations cv WHERE cv.instance_id = p_instance_id AND cv.contact_id = v_contact_id
               FOR UPDATE;
        END IF;
    END IF;

    IF p_direction = 'outbound' THEN
        UPDATE messages m SET gateway_message_id = p_gateway_message_id, updated_at = p_now
         WHERE m.id = (SELECT o.id FROM messages o
                        WHERE o.conversation_id = v_conversation_id AND o.direction = 'outbound'
                          AND o.gateway_message_id IS NULL AND o.sending_since IS NOT NULL
                          AND o.body IS NOT DISTINCT FROM p_body
                        ORDER BY o.seq LIMIT 1)
           AND NOT EXISTS (SELECT 1 FROM messages d
                            WHERE d.instance_id = p_instance_id AND d.gateway_message_id = p_gateway_message_id);
        IF FOUND THEN
            RETURN;  -- our own message, echoed: it already has its row and seq
        END IF;
    END IF;

    INSERT INTO messages (id, org_id, conversation_id, instance_id, seq, gateway_message_id, direction, type,
                          body, status, sent_at, received_at, raw, created_at, updated_at)
    VALUES (p_message_id, p_org_id, v_conversation_id, p_instance_id, v_last_seq + 1, p_gateway_message_id,
            p_direction, p_type, p_body, p_status, p_sent_at, p_now, p_raw, p_now, p_now)
    ON CONFLICT ON CONSTRAINT uq_messages_instance_gateway_id DO NOTHING;
    IF NOT FOUND THEN
        RETURN;  -- a redelivery: no row, no seq consumed
    END IF;

    UPDATE conversations cv SET
        last_seq = v_last_seq + 1,
        last_message_at = greatest(cv.last_message_at, p_sent_at),
        last_message_preview = CASE WHEN p_sent_at >= cv.last_message_at THEN p_preview
                                    ELSE cv.last_message_preview END,
        last_message_direction = CASE WHEN p_sent_at >= cv.last_message_at THEN p_direction
                                      ELSE cv.last_message_direction END,
        unread_count = CASE WHEN v_inbound THEN cv.unread_count + 1 ELSE 0 END,
        status = CASE WHEN v_inbound AND cv.status = 'closed' THEN 'open' ELSE cv.status END,
        updated_at = p_now
     WHERE cv.id = v_conversation_id
    RETURNING cv.status, cv.last_message_at, cv.last_message_preview, cv.last_message_direction, cv.unread_count
         INTO v_status, v_last_message_at, v_preview, v_last_direction, v_unread;

    RETURN QUERY SELECT p_message_id, v_conversation_id, v_last_seq + 1, v_contact_id, v_contact_name,
                        v_status, v_last_message_at, v_preview, v_last_direction, v_unread;
END
$$;
