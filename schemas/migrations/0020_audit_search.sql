-- 0020 audit_search: a vendor's audit log searched by member, kind and outcome without scanning the period.
-- Why: the console's audit search (newest first, 50 a page) and a member's delivery history read
-- audit_events by vendor and time only through audit_events_vendor_at; a filter matching few events of
-- a long period then walked all of them (with 1,000,000 events of one vendor: a member without
-- deliveries 350 ms, a kind absent from the week 160 ms). Every index here costs the audit writer on
-- each event it indexes, so only the member index covers deliveries (a member's history needs it); the
-- others leave out what nearly every event is: the per-request kinds (gateway.audit.events.
-- PER_REQUEST_KINDS, this list exactly, sorted; tests/console/test_audit_console.py compares them) and
-- the outcome allow. The dashboard's count of denials by reason reads the outcome index too.
-- Queries name these predicates literally, as the planner proves a partial index usable only from the
-- query's own text.
-- Revises: 0001 (audit_events; new indexes only).

CREATE INDEX audit_events_member_at ON audit_events (member_id, at) WHERE member_id IS NOT NULL;
CREATE INDEX audit_events_vendor_rare_kind_at ON audit_events (vendor_id, kind, at)
    WHERE kind NOT IN (
        'api:openapi:read', 'audit:checkpoint:read', 'audit:keys:read', 'audit:tile:read',
        'auth:credential:reject', 'console:page:read', 'member:dataset:read',
        'member:datasets:list', 'member:receipt:read', 'member:records:deliver',
        'member:records:stream-end', 'member:records:stream-progress',
        'member:sharing-file:deliver', 'member:sharing-file:stream-end',
        'member:sharing-file:stream-progress', 'member:sharing-table:query',
        'member:sharing-table:read', 'member:sharing:list', 'member:termination:read',
        'member:terms:read', 'member:usage:read', 'oauth:metadata:read', 'oauth:token:issue',
        'request:other:reject');
CREATE INDEX audit_events_vendor_outcome_at ON audit_events (vendor_id, outcome, at) WHERE outcome <> 'allow';
