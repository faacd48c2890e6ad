-- npcflow outputs: what NPCs were asked and said, story arcs and costs (one row per request id).
-- Plain PostgreSQL (runs unchanged on Aurora PostgreSQL). Applied by `npcflow db migrate`, which
-- sets search_path to NPCFLOW_SINK_PG_SCHEMA first; never edit an applied migration, add 002_….
-- Every table is keyed by request_id: the sink upserts, so a replay or a retried batch rewrites
-- the same rows. replied_at_ms decides which reply wins when a request has two outputs (a late
-- engine result after a fallback answered): the later one. No foreign keys: the tables join on
-- request_id, and each is written by the same batch in one transaction.

CREATE TABLE requests (
    request_id        text PRIMARY KEY,
    npc_id            text NOT NULL,
    tenant_id         text NOT NULL,
    prompt            text NOT NULL,
    max_tokens        integer NOT NULL,
    sla               text,
    latency_budget_ms integer,
    tools             jsonb NOT NULL DEFAULT '[]',
    context           jsonb NOT NULL DEFAULT '{}',
    reply_topic       text,
    created_at        timestamptz NOT NULL
);

CREATE TABLE replies (
    request_id        text PRIMARY KEY,
    npc_id            text NOT NULL,
    tenant_id         text NOT NULL,
    tier              text NOT NULL,
    served_tier       text,
    served_by         text NOT NULL,
    engine            text NOT NULL,
    status            text NOT NULL,
    late              boolean NOT NULL,
    text              text NOT NULL,
    intent            text,
    error             text,
    job_id            text,
    chain             jsonb NOT NULL DEFAULT '[]',
    queue_ms          double precision NOT NULL,
    engine_ms         double precision NOT NULL,
    total_ms          double precision NOT NULL,
    replied_at_ms     bigint NOT NULL,
    replied_at        timestamptz NOT NULL
);
CREATE INDEX replies_npc_idx ON replies (npc_id, replied_at);
CREATE INDEX replies_tenant_idx ON replies (tenant_id, replied_at);

-- Bronze outputs with text; the same arc is the S3 object story-arcs/<prefix><request_id>.json.
CREATE TABLE story_arcs (
    request_id        text PRIMARY KEY,
    npc_id            text NOT NULL,
    tenant_id         text NOT NULL,
    prompt            text NOT NULL,
    text              text NOT NULL,
    engine            text NOT NULL,
    replied_at_ms     bigint NOT NULL,
    replied_at        timestamptz NOT NULL
);
CREATE INDEX story_arcs_npc_idx ON story_arcs (npc_id, replied_at);

CREATE TABLE costs (
    request_id        text PRIMARY KEY,
    tenant_id         text NOT NULL,
    tier              text NOT NULL,
    served_tier       text,
    engine            text NOT NULL,
    prompt_tokens     integer NOT NULL,
    completion_tokens integer NOT NULL,
    cost_usd          double precision NOT NULL,
    replied_at_ms     bigint NOT NULL,
    replied_at        timestamptz NOT NULL
);
CREATE INDEX costs_tenant_idx ON costs (tenant_id, replied_at);
