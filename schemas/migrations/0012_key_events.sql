-- 0012 find the audit keyring's events without a scan.
-- Why: issue 15 "Signed key history". Every evidence bundle now carries the events that created,
-- rotated and retired the audit keys (schemas/audit-format.md §4.3), read by kind from every log; there
-- are a handful of them among millions of events, so a partial index holds exactly those.
-- Revises: 0001 (audit_events).

CREATE INDEX audit_events_keyring ON audit_events (log_id, seq) WHERE kind LIKE 'operator:keyring:%';
