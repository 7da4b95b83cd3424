-- 0019 denial_index: the vendor's refusals by time, apart from its other events.
-- Why: the console's dashboard counts a vendor's denials by reason over the last 30 days; among
-- millions of allowed deliveries the (vendor_id, at) index would walk every event of the period, this
-- partial one only the refusals.
-- Revises: 0001 (audit_events; a new index only).

CREATE INDEX audit_events_vendor_denials ON audit_events (vendor_id, at) WHERE outcome = 'deny';
